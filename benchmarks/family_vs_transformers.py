"""fp32 CPU inference: vitkit vs transformers with the same weights, per model family.

    python benchmarks/family_vs_transformers.py [--models vit_s,swin_t,convnext_t] [--batch 32] [--repeats 7]

For each model: a randomly initialised vitkit model and transformers' equal of it with the same weights
(`vitkit.weights.hf.to_transformers`, the family's exporter; called as `vitkit bench --peers hf` calls it,
returning the logits, or a feature tower's pooled output), then both run in this one process on the same
inputs, warmed up, interleaved (ABBA), median of `repeats`. The ratio is vitkit throughput /
transformers throughput. Prints one markdown row per model for BENCHMARKS.md, with the machine.
"""

import argparse
import json

import torch

import vitkit
from vitkit.bench.timing import machine_line, steady_allocator, summary, time_interleaved
from vitkit.bench.variants import build_peer

# key -> (vitkit registry name, overrides, label): the transformers model is the exporter's equal of each
MODELS = {"vit_s": ("vit_small_patch16_224", {}, "vit_small_patch16_224"),
          "swin_t": ("swin_tiny_patch4_window7_224", {}, "swin_tiny_patch4_window7_224"),
          "convnext_t": ("convnext_tiny", {}, "convnext_tiny"),
          "dinov2_s": ("vit_small_patch14_dinov2", {"img_size": 224, "num_classes": 0},
                       "vit_small_patch14_dinov2 (224)")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steady_allocator()  # eager PyTorch would otherwise page-fault its activations in every call
    rows = []
    for key in args.models.split(","):
        source, overrides, name = MODELS[key]
        torch.manual_seed(0)
        ours = vitkit.create_model(source, **overrides).eval()
        hf = build_peer(ours, "hf")  # transformers' model with these weights, returning what ours returns
        x = torch.randn(args.batch, 3, 224, 224)
        with torch.inference_mode():
            max_diff = (ours(x[:4]) - hf(x[:4])).abs().max().item()
            runs = {"vitkit": lambda ours=ours, x=x: ours(x),
                    "transformers": lambda hf=hf, x=x: hf(x)}
            times = time_interleaved(runs, repeats=args.repeats)
        result = {n: summary(t, args.batch) for n, t in times.items()}
        ratio = result["vitkit"]["img_per_s"] / result["transformers"]["img_per_s"]
        flops = vitkit.count_flops(ours, (3, 224, 224)) * args.batch
        print(json.dumps({"model": name, "max_abs_logit_diff": max_diff, "ratio": ratio, **result}), flush=True)
        rows.append(f"| {name} fp32 | {args.batch} | " + " | ".join(
            f"{r['img_per_s']:.1f} ({args.batch / r['max_s']:.1f}-{args.batch / r['min_s']:.1f})"
            for r in (result["vitkit"], result["transformers"])
        ) + f" | {flops / result['vitkit']['median_s'] / 1e9:.0f} | {max_diff:.1e} | **{ratio:.3f}** |")
    print(f"\nmachine: {machine_line()}, cpu capability {torch.backends.cpu.get_cpu_capability()}")
    print("| model | batch | vitkit img/s (min-max) | transformers img/s (min-max) | vitkit GFLOP/s | max abs diff "
          "| ratio |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
