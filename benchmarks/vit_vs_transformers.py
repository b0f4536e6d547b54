"""fp32 CPU inference: vitkit ViT-S/16 vs transformers' ViTForImageClassification, same weights.

    python benchmarks/vit_vs_transformers.py [--batch 32] [--repeats 7] [--threads 2]

Prints a markdown table row for BENCHMARKS.md. Both models run in this one process, warmed up,
interleaved, median of `repeats`; the ratio is vitkit throughput / transformers throughput.
"""

import argparse
import json
import tempfile

import torch

import vitkit
from vitkit.bench.timing import machine_line, steady_allocator, summary, time_interleaved


def hf_vit_small(num_labels: int = 1000):
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                       intermediate_size=1536, num_labels=num_labels, layer_norm_eps=1e-6)
    return ViTForImageClassification(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steady_allocator()  # eager PyTorch would otherwise page-fault its activations in every call
    torch.manual_seed(0)

    hf = hf_vit_small()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = vitkit.load(tmp).eval()
    x = torch.randn(args.batch, 3, 224, 224)
    with torch.inference_mode():
        max_diff = (ours(x[:4]) - hf(pixel_values=x[:4]).logits).abs().max().item()
        times = time_interleaved(
            {"vitkit": lambda: ours(x), "transformers": lambda: hf(pixel_values=x).logits},
            repeats=args.repeats,
        )
    flops = vitkit.count_flops(ours, (3, 224, 224)) * args.batch
    result = {name: summary(t, args.batch) for name, t in times.items()}
    ratio = result["vitkit"]["img_per_s"] / result["transformers"]["img_per_s"]
    print(json.dumps({"max_abs_logit_diff": max_diff, "ratio": ratio, **result}, indent=2))
    print(f"\nmachine: {machine_line()}")
    print("| model | batch | vitkit img/s (min-max) | transformers img/s (min-max) | vitkit GFLOP/s | ratio |")
    print(
        f"| vit_small_patch16_224 fp32 | {args.batch} | "
        + " | ".join(
            f"{r['img_per_s']:.1f} ({args.batch / r['max_s']:.1f}-{args.batch / r['min_s']:.1f})"
            for r in (result["vitkit"], result["transformers"])
        )
        + f" | {flops / result['vitkit']['median_s'] / 1e9:.0f} | {ratio:.3f} |"
    )


if __name__ == "__main__":
    main()
