"""`vitkit bench`: accuracy, speed, memory and FLOPs of models x optimizations, side by side with peers.

    plan = make_plan("vit_tiny_patch16_224", "none,tome:r=8,int8", peers="hf", batch_sizes="1,32")
    results = run_bench(plan, "bench-out")   # results.json, results.csv, *.png, report.html
"""

from .plan import BenchPlan, make_plan
from .runner import run_bench

__all__ = ["BenchPlan", "make_plan", "run_bench"]
