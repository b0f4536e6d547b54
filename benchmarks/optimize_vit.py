"""Speed (and accuracy, given a checkpoint) of every optimization spec, as ratios to fp32 eager.

    python benchmarks/optimize_vit.py                       # ViT-S/16 at 224, batch 32, random weights
    python benchmarks/optimize_vit.py --checkpoint runs/fashion_mnist/best --data fashion-mnist \\
        --batch 256 --specs "none,tome:r=2,int8,..."

All variants run in this one process on the same input, warmed up, interleaved (the order reverses
every round), median of --repeats; throughput ratios are against `none` (fp32 eager) from the same
rounds. Besides `vitkit.optimize` specs, a spec ending in `onnx`, `onnx-int8` or `onnx-int8-static`
(`tome:r=13,onnx-int8`) runs the exported model, token reduction included, in onnxruntime; the static one
calibrates its convolutions on --calibrate training images. Prints JSON and a markdown table for BENCHMARKS.md.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import vitkit
from vitkit.bench.timing import machine_line, steady_allocator, summary, time_interleaved
from vitkit.bench.variants import build_variant, needs_calibration

VIT_S_SPECS = [
    "none", "bf16", "int8", "compile", "onnx", "onnx-int8", "tome:r=13", "tome:r=13:schedule=decreasing",
    "evit:keep=0.7", "tome:r=13,int8", "tome:r=13,compile", "tome:r=13,bf16", "evit:keep=0.7,tome:r=8,int8",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--checkpoint", help="a trained model directory; with --data also measures accuracy")
    parser.add_argument("--data", help="dataset for accuracy: the validation split (choose a variant on it) and "
                                        "the test split (report it)")
    parser.add_argument("--specs", default=",".join(VIT_S_SPECS).replace(",", ";"),
                        help="variants separated by ';' (each a spec such as 'tome:r=13,int8'); "
                             "a spec may end in onnx, onnx-int8 or onnx-int8-static")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-run-s", type=float, default=0.2,
                        help="each timed sample repeats a fast call until it lasts this long (small batches)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibrate", type=int, default=1024,
                        help="training images onnx-int8-static calibrates on (needs --checkpoint and --data)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steady_allocator()  # eager PyTorch would otherwise page-fault its activations in every call
    torch.manual_seed(0)

    model = (vitkit.load(args.checkpoint, optimized=False) if args.checkpoint else vitkit.create_model(args.model))
    model = model.eval()
    c = model.config
    x = torch.randn(args.batch, c.in_chans, c.img_size, c.img_size)
    specs = [s.strip() for s in args.specs.split(";") if s.strip()]
    if specs[0] != "none":
        specs.insert(0, "none")

    calibration = None
    if any(needs_calibration(s) for s in specs) and args.checkpoint and args.data:
        from vitkit.efficiency.onnx_export import calibration_batches

        calibration = calibration_batches(model, args.data, args.calibrate)
    variants, results = {}, {}
    with tempfile.TemporaryDirectory() as tmp_root:
        for i, spec in enumerate(specs):
            start = time.perf_counter()
            try:
                variants[spec] = build_variant(model, spec, x, Path(tmp_root) / str(i), calibration)
                results[spec] = {"build_s": time.perf_counter() - start}
            except Exception as err:  # noqa: BLE001 - a variant that cannot be built is reported, not fatal
                results[spec] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
            print(f"built {spec}: {results[spec]}", file=sys.stderr, flush=True)

        with torch.inference_mode():
            ref = model(x)
            for spec, module in variants.items():
                out = module(x).float()
                results[spec]["max_abs_logit_diff"] = (out - ref).abs().max().item()
                results[spec]["top1_agreement_random"] = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
            times = time_interleaved({s: (lambda m=m: m(x)) for s, m in variants.items()}, repeats=args.repeats,
                                     warmup=2, min_run_s=args.min_run_s)
        base = summary(times["none"], args.batch)["img_per_s"]
        for spec, t in times.items():
            results[spec].update(summary(t, args.batch))
            results[spec]["ratio"] = results[spec]["img_per_s"] / base

        if args.checkpoint and args.data:
            from vitkit.data import build_dataset
            from vitkit.data.batches import eval_batches
            from vitkit.data.transforms import saved_model_eval_transform
            from vitkit.evaluation.classification import evaluate_classifier

            meta = model.metadata or {}
            val_split = meta.get("val_split") if meta.get("dataset") == args.data else None
            splits = {"val": build_dataset(args.data, "val", val_split=val_split),
                      "test": build_dataset(args.data, "test")}
            info = splits["test"].info
            transform = saved_model_eval_transform(model.input_spec, meta, info.mean, info.std)

            for spec, module in variants.items():
                for split, dataset in splits.items():
                    with torch.inference_mode():
                        report = evaluate_classifier(module, eval_batches(dataset, transform, args.batch),
                                                     info.num_classes)
                    results[spec]["top1" if split == "test" else "val_top1"] = report.top1
                print(f"accuracy {spec}: val {results[spec]['val_top1']:.4f}, test {results[spec]['top1']:.4f}",
                      file=sys.stderr, flush=True)

    name = args.checkpoint or args.model
    print(json.dumps({"model": name, "batch": args.batch, "machine": machine_line(), "results": results}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": name, "batch": args.batch, "results": results}, indent=2))
    print(f"\nmachine: {machine_line()}\nmodel: {name}, batch {args.batch}, median of {args.repeats}\n")
    has_acc = any("top1" in r for r in results.values())
    header = "| spec | img/s (min-max) | vs fp32 | max abs logit diff |"
    # choose a variant by its validation drop; the test columns report what it gives
    print(header + (" val drop (pt) | test top-1 | test drop (pt) |" if has_acc else ""))
    print("|---|---|---|---|" + ("---|---|---|" if has_acc else ""))
    base_top1, base_val = results["none"].get("top1"), results["none"].get("val_top1")
    for spec, r in results.items():
        if "error" in r:
            print(f"| {spec} | failed: {r['error']} | | |" + (" | | |" if has_acc else ""))
            continue
        row = (f"| {spec} | {r['img_per_s']:.1f} ({args.batch / r['max_s']:.1f}-{args.batch / r['min_s']:.1f}) | "
               f"**{r['ratio']:.2f}x** | {r['max_abs_logit_diff']:.2g} |")
        if has_acc:
            row += (f" {(base_val - r['val_top1']) * 100:+.2f} | {r['top1'] * 100:.2f}% | "
                    f"{(base_top1 - r['top1']) * 100:+.2f} |")
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
