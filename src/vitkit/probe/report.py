"""The comparison `vitkit probe` writes: probe.json (everything), probe.csv (one row per number), probe.html
(a table) and probe.png (a bar chart per protocol; needs matplotlib, `pip install vitkit[bench]`)."""

import csv
import html
import io
import json
from pathlib import Path

from ..weights.io import atomic_write, atomic_write_text


def headline(result: dict) -> dict[str, float]:
    """The test numbers of one backbone, one per report column (the table and chart show these; the k, head
    and C each protocol selected are in probe.json and probe.csv)."""
    row = {}
    if "knn" in result:
        row["kNN (k on val)"] = result["knn"]["test_top1"]
        if result["knn"].get("test_top1_k20") is not None:
            row["kNN k=20"] = result["knn"]["test_top1_k20"]
    if "linear" in result:
        row["linear"] = result["linear"]["test_top1"]
    if "logreg" in result:
        row["logreg (L-BFGS)"] = result["logreg"]["test_top1"]
    for episode in result.get("fewshot", []):
        row[f"{episode['ways']}-way {episode['shots']}-shot"] = episode["mean"]
    return row


def _columns(report: dict) -> list[str]:
    return list(dict.fromkeys(name for result in report["results"] for name in headline(result)))


def _shown(result: dict, column: str) -> str:
    """A cell as text: percent, and the 95% interval of few-shot episodes."""
    cells = headline(result)
    if column not in cells:
        return "-"
    ci = {f"{e['ways']}-way {e['shots']}-shot": e["ci95"] for e in result.get("fewshot", [])}
    return f"{cells[column] * 100:.2f}%" + (f" +- {ci[column] * 100:.2f}" if column in ci else "")


def csv_text(report: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["backbone", "kind", "protocol", "test_top1", "ci95", "detail"])
    for r in report["results"]:
        name = _safe_cell(r["backbone"])
        if "knn" in r:
            knn = r["knn"]
            writer.writerow([name, r["kind"], "knn", knn["test_top1"], "", f"k={knn['selected_k']} selected on val"])
            if knn.get("test_top1_k20") is not None:
                writer.writerow([name, r["kind"], "knn_k20", knn["test_top1_k20"], "", "DINO protocol, k=20"])
        if "linear" in r:
            feature_set, lr = r["linear"]["selected"]
            writer.writerow([name, r["kind"], "linear", r["linear"]["test_top1"], "", f"{feature_set} lr={lr:g}"])
        if "logreg" in r:
            writer.writerow([name, r["kind"], "logreg", r["logreg"]["test_top1"], "",
                             f"C={r['logreg']['selected_C']:g} selected on val"])
        for e in r.get("fewshot", []):
            writer.writerow([name, r["kind"], f"fewshot_{e['ways']}way_{e['shots']}shot", e["mean"], e["ci95"],
                             f"{e['episodes']} episodes, {e['queries']} queries"])
    return out.getvalue()


def _safe_cell(text: str) -> str:
    """A spreadsheet would run a cell starting with = + - @ as a formula: prefix it with a quote."""
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def html_text(report: dict) -> str:
    columns = _columns(report)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["backbone", "kind", *columns])
    rows = []
    for r in report["results"]:
        values = "".join(f"<td>{html.escape(_shown(r, c))}</td>" for c in columns)
        rows.append(f"<tr><td>{html.escape(r['backbone'])}</td><td>{html.escape(r['kind'])}</td>{values}</tr>")
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>vitkit probe: {html.escape(report['data'])}"
            "</title><style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}</style></head><body>"
            f"<h1>Frozen-feature probes on {html.escape(report['data'])}</h1><p>Test top-1 of what each protocol "
            "selected on the validation split; few-shot: mean accuracy of the episodes +- their 95% interval.</p>"
            f"<table><tr>{head}</tr>{''.join(rows)}</table></body></html>\n")


def _short(label: str, limit: int = 44) -> str:
    """A legend label: long paths keep their start (random:, the run) and end (best/)."""
    return label if len(label) <= limit else f"{label[:14]}...{label[-(limit - 17):]}"


def save_chart(report: dict, path: Path) -> bool:
    """A grouped bar chart (protocol x backbone); False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    columns = _columns(report)
    results = report["results"]
    width = 0.8 / max(len(results), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(columns) + 2), 4))
    for i, r in enumerate(results):
        cells = headline(r)
        xs = [j + i * width for j, c in enumerate(columns) if c in cells]
        ax.bar(xs, [cells[c] * 100 for c in columns if c in cells], width, label=_short(r["backbone"]))
    ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(columns))], columns, rotation=15)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"frozen-feature probes: {report['data']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return True


def write_all(report: dict, out: str | Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "probe.json", out / "probe.csv", out / "probe.html"]
    atomic_write_text(written[0], json.dumps(report, indent=2) + "\n")
    atomic_write_text(written[1], csv_text(report))
    atomic_write_text(written[2], html_text(report))
    if save_chart(report, out / "probe.png"):
        written.append(out / "probe.png")
    return written


def table(report: dict) -> str:
    """Markdown table of the headline numbers (printed by the CLI, pasted into BENCHMARKS.md)."""
    columns = _columns(report)
    lines = ["| backbone | kind | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for r in report["results"]:
        values = " | ".join(_shown(r, c) for c in columns)
        lines.append(f"| {r['backbone']} | {r['kind']} | {values} |")
    return "\n".join(lines)
