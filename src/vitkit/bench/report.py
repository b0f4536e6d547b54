"""Results to rows (CSV columns named like timm's benchmark CSV where they overlap), the Pareto set,
matplotlib plots and one self-contained HTML page; written to a temporary directory, then moved."""

import csv
import html
import json
from pathlib import Path

from ..reporting import CSS, PLOT_CHECK_SCRIPT, png_img, write_report_dir
from .plan import BenchPlan
from .variants import PEERS

COLUMNS = [
    "model", "impl", "spec", "status", "infer_batch_size", "infer_img_size", "infer_samples_per_sec",
    "infer_samples_per_sec_min", "infer_samples_per_sec_max", "infer_step_time", "latency_p50_ms", "latency_p95_ms",
    "peak_memory_mb", "param_count", "infer_gmacs", "gflops", "top1", "loss", "eval_samples", "vs_none",
    *[f"vs_{library}" for library in PEERS.values()], "pareto", "error",
]
PLOTS = {"pareto": "pareto.png", "throughput": "throughput_vs_batch.png", "memory": "memory.png"}


def measured_ok(row: dict) -> bool:
    """Timed (status ok, or partial: timed but e.g. accuracy failed)."""
    return row.get("infer_samples_per_sec") is not None


def model_rows(plan: BenchPlan, entry, raw: dict) -> list[dict]:
    rows = []
    for key in raw["keys"]:
        probe, measured = raw["probe"].get(key, {}), raw["measure"].get(key, {})
        peer = key.removeprefix("peer:") if key.startswith("peer:") else None
        for batch in plan.batch_sizes:
            b = str(batch)
            memory = probe.get("memory_mb", {}).get(b)
            timing = measured.get("throughput", {}).get(b)
            row = {
                "model": entry.name, "impl": PEERS[peer] if peer else "vitkit", "spec": "none" if peer else key,
                "infer_batch_size": batch, "infer_img_size": entry.img_size,
                "peak_memory_mb": memory if isinstance(memory, int | float) else None,
                "param_count": measured["params"] / 1e6 if "params" in measured else None,  # millions, as timm
                "gflops": measured["flops"] / 1e9 if "flops" in measured else None,
                "infer_gmacs": measured["flops"] / 2e9 if "flops" in measured else None,
                **{k: measured.get(k) for k in ("top1", "loss", "eval_samples")},
            }
            if "latency_ms" in measured:
                row["latency_p50_ms"] = measured["latency_ms"]["p50"]
                row["latency_p95_ms"] = measured["latency_ms"]["p95"]
            if timing:
                row.update(infer_samples_per_sec=timing["img_per_s"], infer_samples_per_sec_min=batch / timing["max_s"],
                           infer_samples_per_sec_max=batch / timing["min_s"], infer_step_time=timing["median_s"] * 1e3)
            if timing:  # later failures of the same process (a bigger batch, say) do not touch this row
                partial = measured.get("partial_errors", [])
                row["status"], row["error"] = ("partial", "; ".join(partial)) if partial else ("ok", None)
            else:
                row["status"] = "failed"
                row["error"] = ((memory or {}).get("error") if isinstance(memory, dict) else None) or \
                    measured.get("batch_errors", {}).get(b) or measured.get("error") or probe.get("error") or \
                    "not measured"
            rows.append(row)
    return rows


def add_ratios(rows: list[dict]) -> None:
    def speed(model, impl, spec, batch):
        for r in rows:
            if (r["model"], r["impl"], r["spec"], r["infer_batch_size"]) == (model, impl, spec, batch):
                return r.get("infer_samples_per_sec")
        return None

    for r in rows:
        if not measured_ok(r):
            continue
        own = r["infer_samples_per_sec"]
        base = speed(r["model"], "vitkit", "none", r["infer_batch_size"])
        r["vs_none"] = own / base if base else None
        for library in PEERS.values():
            peer = speed(r["model"], library, "none", r["infer_batch_size"])
            r[f"vs_{library}"] = own / peer if peer else None


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (both to be maximised)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(x2 >= x and y2 >= y and (x2 > x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def mark_pareto(rows: list[dict]) -> str:
    """Flag each batch size's Pareto set; returns what the axes are."""
    with_accuracy = any(r.get("top1") is not None and measured_ok(r) for r in rows)
    axes = "top1" if with_accuracy else "peak_memory_mb"
    for batch in sorted({r["infer_batch_size"] for r in rows}):
        group = [r for r in rows if r["infer_batch_size"] == batch and measured_ok(r) and r.get(axes) is not None]
        sign = 1 if axes == "top1" else -1  # memory: less is better
        for i in pareto_front([(r["infer_samples_per_sec"], sign * r[axes]) for r in group]):
            group[i]["pareto"] = True
    for r in rows:
        r.setdefault("pareto", False)
    return axes


def assemble(plan: BenchPlan, raw: dict, notes: list[str], machine: dict, command: str | None) -> dict:
    rows = []
    for entry in plan.models:
        rows += model_rows(plan, entry, raw[entry.name])
    add_ratios(rows)
    axes = mark_pareto(rows)
    rows = [{c: r.get(c) for c in COLUMNS} for r in rows]
    versions = {}
    for library in ("transformers", "onnxruntime", "timm"):
        try:
            versions[library] = __import__(library).__version__
        except Exception:  # noqa: BLE001 - absent is fine; the version is just recorded
            pass
    return {
        "machine": {**machine, **versions}, "command": command, "plan": plan.to_dict(), "notes": notes,
        "pareto_axes": ["infer_samples_per_sec", axes], "rows": rows,
        "failed": [{k: r[k] for k in ("model", "impl", "spec", "infer_batch_size", "error")}
                   for r in rows if r["status"] == "failed"],
    }


# ---------------------------------------------------------------------------------------------- output


def write_report(results: dict, out: Path) -> None:
    """Written into a fresh directory that then replaces `out`: an existing report is either untouched or
    wholly replaced."""

    def fill(tmp: Path) -> None:
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        with open(tmp / "results.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows({k: _csv_value(v) for k, v in r.items()} for r in results["rows"])
        plot_all(results, tmp)
        (tmp / "report.html").write_text(render_html(results, tmp))

    write_report_dir(out, fill)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_value(value):
    """A CSV cell; text that a spreadsheet would run as a formula gets a leading ' (OWASP's CSV-injection
    advice). Only strings are escaped, so numbers such as -0.5 stay numbers."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return "" if value is None else value


def _label(r: dict, with_model: bool) -> str:
    name = r["spec"] if r["impl"] == "vitkit" else r["impl"]
    return f"{r['model']} {name}" if with_model else name


def plot_all(results: dict, directory: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    ok = [r for r in rows if measured_ok(r)]
    with_model = len({r["model"] for r in rows}) > 1
    axis = results["pareto_axes"][1]

    batches = sorted({r["infer_batch_size"] for r in ok})
    fig, ax = plt.subplots(figsize=(8, 5.5))
    if batches:
        batch = batches[-1]
        group = [r for r in ok if r["infer_batch_size"] == batch and r.get(axis) is not None]
        for r in group:
            ax.scatter(r["infer_samples_per_sec"], r[axis], s=80 if r["pareto"] else 30,
                       c="tab:red" if r["pareto"] else "tab:gray", edgecolors="black" if r["pareto"] else "none",
                       zorder=3)
            ax.annotate(_label(r, with_model), (r["infer_samples_per_sec"], r[axis]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        front = sorted((r for r in group if r["pareto"]), key=lambda r: r["infer_samples_per_sec"])
        if len(front) > 1:
            ax.step([r["infer_samples_per_sec"] for r in front], [r[axis] for r in front],
                    where="pre", color="tab:red", label="Pareto front")
            ax.legend()
        ax.set_title(f"{'Accuracy' if axis == 'top1' else 'Peak memory'} vs throughput, batch {batch}")
    else:
        ax.set_title("no configuration ran successfully")
    ax.set_xlabel("throughput (img/s)")
    ax.set_ylabel("test top-1" if axis == "top1" else "peak memory (MiB, lower is better)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(directory / PLOTS["pareto"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 5))
    series = {}
    for r in ok:
        series.setdefault(_label(r, with_model), []).append((r["infer_batch_size"], r["infer_samples_per_sec"]))
    for label, points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (img/s)")
    ax.set_title("Throughput vs batch size")
    if series:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(directory / PLOTS["throughput"], dpi=110)
    plt.close(fig)

    labels = list(dict.fromkeys(_label(r, with_model) for r in rows if r["peak_memory_mb"] is not None))
    all_batches = sorted({r["infer_batch_size"] for r in rows})
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.45 * len(labels) * max(1, len(all_batches)) ** 0.5 + 1)))
    height = 0.8 / max(1, len(all_batches))
    for j, batch in enumerate(all_batches):
        values = {_label(r, with_model): r["peak_memory_mb"] for r in rows if r["infer_batch_size"] == batch}
        ax.barh([i + j * height for i in range(len(labels))], [values.get(lb) or 0 for lb in labels],
                height=height, label=f"batch {batch}")
    ax.set_yticks([i + height * (len(all_batches) - 1) / 2 for i in range(len(labels))], labels, fontsize=7)
    ax.set_xlabel("peak memory (MiB)" + (", CUDA max allocated" if results["plan"]["device"] != "cpu" else
                                         ", RSS of its own process"))
    ax.set_title("Peak memory")
    if labels:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(directory / PLOTS["memory"], dpi=110)
    plt.close(fig)


def _fmt(column: str, value) -> str:
    if value is None:
        return ""
    if column.startswith("vs_"):
        return f"{value:.2f}x"
    if column == "top1":
        return f"{value * 100:.2f}%"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, bool):
        return "yes" if value else ""
    return str(value)


def render_html(results: dict, directory: Path) -> str:
    e = html.escape
    m, plan = results["machine"], results["plan"]
    axis = "test top-1" if results["pareto_axes"][1] == "top1" else "peak memory"
    shown = [c for c in COLUMNS if any(r.get(c) not in (None, False) for r in results["rows"])]
    text_columns = {"model", "impl", "spec", "status", "error"}
    head = "".join(f"<th>{e(c)}</th>" for c in shown)
    body = []
    for r in results["rows"]:
        cls = r["status"] if r["status"] != "ok" else ("pareto" if r["pareto"] else "")
        cells = "".join(f'<td class="{"text" if c in text_columns else ""}">{e(_fmt(c, r.get(c)))}</td>' for c in shown)
        body.append(f'<tr class="{cls}">{cells}</tr>')
    plots = []
    for name, file in PLOTS.items():
        plots.append(png_img(directory / file, name))
    notes = "".join(f"<li>{e(n)}</li>" for n in results["notes"]) or "<li>none</li>"
    failed = "".join(f"<li>{e(f['model'])} {e(f['impl'])} {e(f['spec'])} batch {f['infer_batch_size']}: "
                     f"{e(str(f['error']))}</li>" for f in results["failed"]) or "<li>none</li>"
    machine = ", ".join(f"{k} {v}" for k, v in m.items())
    column = results["pareto_axes"][1]
    pareto_list = "".join(f"<li>{e(r['model'])} {e(r['impl'])} {e(r['spec'])} batch {r['infer_batch_size']}: "
                          f"{r['infer_samples_per_sec']:.1f} img/s, {axis} {e(_fmt(column, r.get(column)))}</li>"
                          for r in results["rows"] if r["pareto"]) or "<li>none</li>"
    accuracy = ""
    if plan["data"]:
        subset = f"the first {plan['eval_limit']} test images" if plan["eval_limit"] else "the test split"
        accuracy = f"Accuracy on {subset} of {e(plan['data'])}."
    command = f"Command: <code>{e(results['command'])}</code>" if results.get("command") else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>vitkit bench</title>
<style>{CSS}</style></head>
<body>
<h1>vitkit bench</h1>
<p class="note">{e(machine)}</p>
<p class="note">Batch sizes {e(str(plan['batch_sizes']))}; throughput is the median of {plan['repeats']} timed runs
after {plan['warmup']} warm-up calls (min and max in the table), all variants of a model interleaved in one process;
latency at batch 1 over {plan['latency_runs']} calls; peak memory is each variant alone in its own process.
{accuracy} {command}</p>
<h2>Pareto set (throughput vs {e(axis)}, highlighted below)</h2><ul>{pareto_list}</ul>
<h2>Results</h2>
<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>
<h2>Plots</h2><p id="plot-warning">A plot failed to load.</p>
<div class="plots">{''.join(plots)}</div>
<h2>Failed configurations</h2><ul>{failed}</ul>
<h2>Notes</h2><ul>{notes}</ul>
<script>{PLOT_CHECK_SCRIPT}</script>
</body></html>
"""
