"""`vitkit trust`: calibration, conformal prediction, corruption robustness, OOD detection and explanations
of a trained classifier in one report (see run.py for what is measured and how)."""

from .report import markdown_summary, write_report
from .run import TrustOptions, run_trust

__all__ = ["TrustOptions", "markdown_summary", "run_trust", "write_report"]
