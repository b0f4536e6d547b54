"""The trust report: results.json, one PNG per figure and report.html (self-contained: the figures are
embedded), written into a fresh directory that replaces the old report in one step. Predictions stay in
`predictions/` beside the report so the next run reuses them."""

import html
import json
import math
import shutil
from pathlib import Path

import torch

from ..reporting import CSS, PLOT_CHECK_SCRIPT, png_img, write_report_dir

FIGURES = {
    "reliability": "reliability.png",
    "conformal": "conformal.png",
    "corruptions": "corruptions.png",
    "ood_roc": "ood_roc.png",
    "explanations": "explanations.png",
}


def _json_ready(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _json_ready(value.tolist())
    return value


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # a runtime dependency: only a broken install gets here
        raise RuntimeError("the trust report draws its figures with matplotlib: pip install matplotlib") from err
    return plt


def plot_reliability(cal: dict, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
    for ax, key, title in ((axes[0], "before", "before"), (axes[1], "after", f"after T={cal['temperature']:.2f}")):
        rel = cal[f"reliability_{key}"]
        bins = len(rel["accuracy"])
        centers = [(i + 0.5) / bins for i in range(bins)]
        ax.bar(centers, rel["accuracy"], width=1 / bins, edgecolor="k", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "r--", label="perfect calibration")
        ax.set_title(f"{title}: ECE {cal[key]['ece'] * 100:.2f}%")
        ax.set_xlabel("confidence")
        ax.legend(loc="upper left")
    axes[0].set_ylabel("accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_conformal(conf: dict, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for name, rows in conf["scores"].items():
        alphas = [r["alpha"] for r in rows]
        axes[0].plot(alphas, [r["coverage"] for r in rows], "o-", label=name)
        axes[1].plot(alphas, [r["mean_set_size"] for r in rows], "o-", label=name)
    alphas = sorted({r["alpha"] for rows in conf["scores"].values() for r in rows})
    axes[0].plot(alphas, [1 - a for a in alphas], "k--", label="1 - alpha")
    axes[0].set(xlabel="alpha", ylabel="test coverage", title="coverage vs alpha")
    axes[1].set(xlabel="alpha", ylabel="mean set size", title="set size vs alpha")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_corruptions(sweep: dict, path: Path) -> None:
    plt = _plt()
    names = list(sweep["ce"])
    severities = sorted({r["severity"] for r in sweep["rows"]})
    grid = [[next(r["top1"] for r in sweep["rows"] if r["corruption"] == n and r["severity"] == s) * 100
             for s in severities] for n in names]
    fig, ax = plt.subplots(figsize=(1.2 * len(severities) + 3, 0.32 * len(names) + 1.5))
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", color="w" if value < 60 else "k", fontsize=8)
    ax.set_xticks(range(len(severities)), [str(s) for s in severities])
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("severity")
    ax.set_title(f"test top-1 (%) per corruption; clean {sweep['clean']['top1'] * 100:.1f}%")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_roc(section: dict, path: Path) -> None:
    plt = _plt()
    sets = list(section["roc"])
    fig, axes = plt.subplots(1, len(sets), figsize=(3.6 * len(sets), 3.6), squeeze=False)
    for ax, spec in zip(axes[0], sets, strict=True):
        for name, (fpr, tpr) in section["roc"][spec].items():
            auroc = section["metrics"][name][spec]["auroc"]
            ax.plot(fpr, tpr, label=f"{name} {auroc:.3f}")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(title=f"OOD: {spec}", xlabel="FPR (OOD accepted)", ylabel="TPR (in-dist. accepted)")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_explanations(figures: dict, class_names: list[str], path: Path, columns: int = 8) -> None:
    plt = _plt()
    raw, labels, maps = figures["raw"], figures["labels"], figures["maps"]
    count = min(columns, len(labels))
    methods = list(maps)
    fig, axes = plt.subplots(len(methods) + 1, count, figsize=(1.3 * count, 1.35 * (len(methods) + 1)),
                             squeeze=False)
    for j in range(count):
        image = raw[j].float().mean(0) if raw.shape[1] == 3 else raw[j, 0].float()
        axes[0, j].imshow(image.numpy(), cmap="gray")
        axes[0, j].set_title(class_names[int(labels[j])][:12], fontsize=7)
        for i, method in enumerate(methods, start=1):
            size = maps[method].shape[-1]
            background = torch.nn.functional.interpolate(image[None, None], size=(size, size), mode="bilinear")[0, 0]
            axes[i, j].imshow(background.numpy(), cmap="gray")
            axes[i, j].imshow(maps[method][j].float().numpy(), cmap="jet", alpha=0.5)
    for i, method in enumerate(["image", *methods]):
        axes[i, 0].set_ylabel(method, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _pct(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value * 100:.2f}"


def _table(head: list[str], rows: list[list[str]], flags: list[list[bool]] | None = None) -> str:
    e = html.escape
    header = "".join(f"<th>{e(h)}</th>" for h in head)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(f'<td class="{"flag" if flags and flags[i][j] else ("text" if j == 0 else "")}">{e(c)}</td>'
                        for j, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def markdown_summary(results: dict) -> str:
    """The headline numbers as the command prints them."""
    cal = results["calibration"]
    lines = [f"test top-1 {results['test_top1'] * 100:.2f}% on {results['test_images']} images of {results['data']}",
             f"ECE {cal['before']['ece'] * 100:.2f}% -> {cal['after']['ece'] * 100:.2f}% after temperature scaling "
             f"(T={cal['temperature']:.3f}, fitted on {results['val_images']} validation images)"]
    for name, rows in results["conformal"]["scores"].items():
        parts = [f"alpha {r['alpha']:g}: coverage {r['coverage'] * 100:.1f}%, set {r['mean_set_size']:.2f}"
                 for r in rows]
        lines.append(f"conformal {name}: " + "; ".join(parts))
    sweep = results.get("corruptions") or {}
    if sweep:
        lines.append(f"corruptions: mean top-1 {sweep['mean_corrupted_top1'] * 100:.2f}% (clean "
                     f"{sweep['clean']['top1'] * 100:.2f}%), mCE {sweep['mce'] * 100:.1f}% vs {sweep['baseline']}")
    for name, per_set in (results.get("ood") or {}).get("metrics", {}).items():
        lines.append(f"OOD {name}: " + "; ".join(f"{spec} AUROC {m['auroc']:.3f} FPR95 {m['fpr95'] * 100:.1f}%"
                                                  for spec, m in per_set.items()))
    faith = (results.get("explanations") or {}).get("faithfulness", {})
    for method, m in faith.get("methods", {}).items():
        flag = "" if m["beats_random"] else "  (does not beat random)"
        lines.append(f"explanation {method}: deletion AUC {m['deletion_auc']:.3f}, insertion AUC "
                     f"{m['insertion_auc']:.3f}{flag}")
    return "\n".join(lines)


def render_html(results: dict, directory: Path) -> str:
    e = html.escape
    cal = results["calibration"]
    sections = [f"<p>Test top-1 {_pct(results['test_top1'])}% on {results['test_images']} test images of "
                f"<code>{e(results['data'])}</code>; temperature and conformal thresholds fitted on the "
                f"{results['val_images']} validation images only.</p>"]
    metrics = ["ece", "classwise_ece", "mce", "nll", "brier", "accuracy"]
    rows = [["before", *[f"{cal['before'][m]:.4f}" for m in metrics]],
            [f"after (T={cal['temperature']:.3f})", *[f"{cal['after'][m]:.4f}" for m in metrics]]]
    sections.append("<h2>Calibration (test)</h2>" + _table(["", *metrics], rows))
    conf_rows = [[name, f"{r['alpha']:g}", _pct(r["coverage"]), f"{r['mean_set_size']:.3f}", f"{r['threshold']:.4f}"]
                 for name, rs in results["conformal"]["scores"].items() for r in rs]
    sections.append("<h2>Conformal prediction (test)</h2>"
                    + _table(["score", "alpha", "coverage %", "mean set size", "threshold"], conf_rows))
    sweep = results.get("corruptions") or {}
    if sweep:
        rows = [[r["corruption"], str(r["severity"]), _pct(r["top1"]), _pct(r["ece"]), _pct(r["coverage"]),
                 f"{r['set_size']:.2f}", _pct(r["baseline_top1"])] for r in sweep["rows"]]
        sections.append(f"<h2>Corruptions ({sweep['images']} test images each)</h2><p>mCE "
                        f"{sweep['mce'] * 100:.1f}% and relative mCE {_pct(sweep['relative_mce'])}% against "
                        f"{e(sweep['baseline'])}; clean top-1 {_pct(sweep['clean']['top1'])}%, baseline "
                        f"{_pct(sweep['clean']['baseline_top1'])}%. Coverage at alpha {sweep['alpha']:g} (LAC).</p>"
                        + _table(["corruption", "severity", "top-1 %", "ECE %", "coverage %", "set size",
                                  "baseline top-1 %"], rows))
    section = results.get("ood") or {}
    if section:
        rows = [[name, spec, f"{m['auroc']:.4f}", _pct(m["fpr95"])]
                for name, per_set in section["metrics"].items() for spec, m in per_set.items()]
        sizes = ", ".join(f"{e(k)}: {v}" for k, v in section["sets"].items())
        sections.append(f"<h2>Out-of-distribution detection</h2><p>OOD sets ({sizes}) against the test split; "
                        f"Mahalanobis and kNN (k={section['k']}) fitted on training features.</p>"
                        + _table(["score", "OOD set", "AUROC", "FPR@95% TPR %"], rows))
    faith = (results.get("explanations") or {}).get("faithfulness", {})
    if faith:
        rows, flags = [], []
        for method, m in faith["methods"].items():
            rows.append([method, f"{m['deletion_auc']:.4f}", f"{m['insertion_auc']:.4f}",
                         "yes" if m["beats_random"] else "NO"])
            flags.append([False, False, False, not m["beats_random"]])
        random = faith["random"]
        rows.append(["random maps", f"{random['deletion_auc']:.4f}", f"{random['insertion_auc']:.4f}", ""])
        flags.append([False] * 4)
        sections.append(f"<h2>Explanations ({results['explanations']['images']} test images)</h2><p>Deletion area: "
                        "lower is better; insertion area: higher is better. A method that does not beat random maps "
                        "on both is flagged.</p>"
                        + _table(["method", "deletion AUC", "insertion AUC", "beats random"], rows, flags))
    plots = "".join(png_img(directory / f, name) for name, f in FIGURES.items() if (directory / f).exists())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>vitkit trust</title>
<style>{CSS}</style></head>
<body>
<h1>vitkit trust: {e(results['checkpoint'])}</h1>
{''.join(sections)}
<h2>Figures</h2><p id="plot-warning">A figure failed to load.</p>
<div class="plots">{plots}</div>
<script>{PLOT_CHECK_SCRIPT}</script>
</body></html>
"""


def write_report(results: dict, figures: dict, out: str | Path) -> Path:
    """The report directory `out`; predictions saved by this run (out/predictions) are kept in it."""
    out = Path(out)
    results = _json_ready(results)

    def fill(tmp: Path) -> None:
        if (out / "predictions").is_dir():
            shutil.copytree(out / "predictions", tmp / "predictions")
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        plot_reliability(results["calibration"], tmp / FIGURES["reliability"])
        plot_conformal(results["conformal"], tmp / FIGURES["conformal"])
        if results.get("corruptions"):
            plot_corruptions(results["corruptions"], tmp / FIGURES["corruptions"])
        if results.get("ood"):
            plot_roc(results["ood"], tmp / FIGURES["ood_roc"])
        if figures:
            plot_explanations(figures, results["class_names"], tmp / FIGURES["explanations"])
        (tmp / "report.html").write_text(render_html(results, tmp))

    return write_report_dir(out, fill)
