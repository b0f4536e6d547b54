"""`vitkit zoo`: a small config of every model family trained on one dataset under the same wall-clock
budget, then measured the same way (accuracy, cost, speed, memory, calibration) in one report."""

from .recipes import zoo_names, zoo_recipe
from .report import markdown_table, write_report
from .run import merge_zoo, run_zoo

__all__ = ["markdown_table", "merge_zoo", "run_zoo", "write_report", "zoo_names", "zoo_recipe"]
