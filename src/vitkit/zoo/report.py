"""The zoo's report: results.json, results.csv, pareto.png (test top-1 vs inference img/s at batch 256, the
Pareto front highlighted) and report.html in the bench's format, beside the training runs in `runs/`."""

import csv
import html
import json
import os
import shutil
from pathlib import Path

from ..bench.report import pareto_front
from ..reporting import CSS, PLOT_CHECK_SCRIPT, png_img, write_report_dir

COLUMNS = ["model", "architecture", "val_top1", "top1", "top1_std", "ece", "params", "gflops", "train_img_s",
           "infer_img_s_b1", "infer_img_s_b256", "peak_mem_mb", "epochs", "epochs_done", "est_epoch_s", "train_min",
           "img_size", "seeds", "pareto"]
HEADINGS = {"val_top1": "val top-1 (selection)", "top1": "test top-1", "top1_std": "± (seeds)", "ece": "ECE",
            "gflops": "GFLOPs", "train_img_s": "train img/s", "infer_img_s_b1": "infer img/s b1",
            "infer_img_s_b256": "infer img/s b256", "peak_mem_mb": "peak MiB (b256)", "est_epoch_s": "est. s/epoch",
            "train_min": "train min", "epochs_done": "epochs trained (fewest)"}
PARETO_X = "infer_img_s_b256"
PLOT = "pareto.png"


def mark_pareto(rows: list[dict]) -> None:
    """Flag the rows no other row beats on both test top-1 and inference img/s at batch 256."""
    front = set(pareto_front([(r[PARETO_X], r["top1"]) for r in rows]))
    for i, r in enumerate(rows):
        r["pareto"] = i in front


def write_report(results: dict, out: Path) -> None:
    """Replaces `out` as a whole (`write_report_dir`); the training runs in `out/runs` are carried over as
    hard links, so they survive whether or not the replacement succeeds."""
    mark_pareto(results["rows"])

    def fill(tmp: Path) -> None:
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        with open(tmp / "results.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()}
                             for r in results["rows"])
        plot_pareto(results["rows"], tmp / PLOT)
        (tmp / "report.html").write_text(render_html(results, tmp))
        if (out / "runs").is_dir():
            shutil.copytree(out / "runs", tmp / "runs", copy_function=os.link)

    write_report_dir(out, fill)


def plot_pareto(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for r in rows:
        ax.scatter(r[PARETO_X], r["top1"] * 100, s=80 if r["pareto"] else 30, zorder=3,
                   c="tab:red" if r["pareto"] else "tab:gray", edgecolors="black" if r["pareto"] else "none")
        ax.annotate(r["model"], (r[PARETO_X], r["top1"] * 100), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r[PARETO_X])
    if len(front) > 1:
        ax.step([r[PARETO_X] for r in front], [r["top1"] * 100 for r in front], where="pre", color="tab:red",
                label="Pareto front")
        ax.legend()
    ax.set_xscale("log")
    ax.set_xlabel("inference throughput at batch 256 (img/s, log scale)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Accuracy vs inference speed, same training budget")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(column: str, value) -> str:
    if value is None:
        return ""
    if column in ("top1", "top1_std", "val_top1"):
        return f"{value * 100:.2f}%"
    if column == "ece":
        return f"{value:.4f}"
    if column == "params":
        return f"{value / 1e6:.3f}M"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _cell(column: str, row: dict) -> str:
    if column == "epochs" and row.get("stopped_by_time_limit"):  # a run stopped at the budget before its plan
        return f"{row['epochs_done']} of {row['epochs']}"
    return _fmt(column, row.get(column))


def markdown_table(results: dict) -> str:
    shown = ["model", "val_top1", "top1", "params", "gflops", "train_img_s", "infer_img_s_b1", "infer_img_s_b256",
             "peak_mem_mb", "ece", "epochs", "train_min"]
    lines = ["| " + " | ".join(HEADINGS.get(c, c) for c in shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_cell(c, r) for c in shown) + " |" for r in results["rows"]]
    return "\n".join(lines)


def render_html(results: dict, directory: Path) -> str:
    e = html.escape
    rows = results["rows"]
    shown = [c for c in COLUMNS if any(r.get(c) not in (None, False) for r in rows)]
    head = "".join(f"<th>{e(HEADINGS.get(c, c))}</th>" for c in shown)
    body = "".join(
        f'<tr class="{"pareto" if r["pareto"] else ""}">'
        + "".join(f'<td class="{"text" if c in ("model", "architecture") else ""}">{e(_fmt(c, r.get(c)))}</td>'
                  for c in shown) + "</tr>" for r in rows)
    pareto = "".join(f"<li>{e(r['model'])}: {r[PARETO_X]:.0f} img/s at batch 256, test top-1 {r['top1'] * 100:.2f}%"
                     "</li>" for r in rows if r["pareto"]) or "<li>none</li>"
    machine = ", ".join(f"{k} {v}" for k, v in results["machine"].items())
    command = f" Command: <code>{e(results['command'])}</code>" if results.get("command") else ""
    for part in results.get("merged_from", ()):
        command += (f" Merged from <code>{e(part['dir'])}</code> (trained by <code>{e(part.get('command') or '?')}"
                    "</code>)")
    if results.get("merged_from"):
        command += (" Inference speed and memory re-timed here, one model after another." if results.get("remeasured")
                    else " Inference speed and memory as each run measured them.")
    seeds = ", ".join(str(s) for s in results["seeds"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>vitkit zoo</title>
<style>{CSS}</style></head>
<body>
<h1>vitkit zoo: {e(results['data'])}, {results['budget_min']:g} minutes per model</h1>
<p class="note">{e(machine)}</p>
<p class="note">Each model's epochs were planned to fill 95% of the budget (epoch time estimated from timed
steps before training); a run stops early when another epoch would end past the budget (epochs "N of M"),
seeds {e(seeds)}; the model selected on the validation split is evaluated on the test
split (top-1 and ECE, means over seeds). Inference img/s: median of timed runs after warm-up (the bench's
worker); peak memory: peak RSS of a process running batch-256 forwards; GFLOPs: one image.{command}</p>
<h2>Pareto set (test top-1 vs inference img/s at batch 256, highlighted below)</h2><ul>{pareto}</ul>
<h2>Results</h2>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<h2>Plots</h2><p id="plot-warning">A plot failed to load.</p>
<div class="plots">{png_img(directory / PLOT, "pareto")}</div>
<script>{PLOT_CHECK_SCRIPT}</script>
</body></html>
"""
