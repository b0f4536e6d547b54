"""fp32 CPU inference: vitkit vs transformers with the same weights, per model family.

    python benchmarks/family_vs_transformers.py [--models vit_s,swin_t,convnext_t] [--batch 32] [--repeats 7]

For each model: a randomly initialised transformers model is saved with `save_pretrained` and loaded by
`vitkit.load` (vitkit's converter for that family), then both run in this one process on the same
inputs, warmed up, interleaved (ABBA), median of `repeats`. The ratio is vitkit throughput /
transformers throughput. Prints one markdown row per model for BENCHMARKS.md, with the machine.
"""

import argparse
import json
import tempfile

import torch

import vitkit
from vitkit.bench.timing import machine_line, steady_allocator, summary, time_interleaved


def hf_vit_s():
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12,
                                               num_attention_heads=6, intermediate_size=1536, num_labels=1000,
                                               layer_norm_eps=1e-6))


def hf_swin_t():
    from transformers import SwinConfig, SwinForImageClassification

    return SwinForImageClassification(SwinConfig(image_size=224, patch_size=4, embed_dim=96, depths=[2, 2, 6, 2],
                                                 num_heads=[3, 6, 12, 24], window_size=7, num_labels=1000))


def hf_convnext_t():
    from transformers import ConvNextConfig, ConvNextForImageClassification

    return ConvNextForImageClassification(ConvNextConfig(depths=[3, 3, 9, 3], hidden_sizes=[96, 192, 384, 768],
                                                         num_labels=1000))


def hf_dinov2_s():
    from transformers import Dinov2Config, Dinov2Model

    return Dinov2Model(Dinov2Config(image_size=224, patch_size=14, hidden_size=384, num_hidden_layers=12,
                                    num_attention_heads=6))


MODELS = {"vit_s": ("vit_small_patch16_224", hf_vit_s), "swin_t": ("swin_tiny_patch4_window7_224", hf_swin_t),
          "convnext_t": ("convnext_tiny", hf_convnext_t), "dinov2_s": ("vit_small_patch14_dinov2 (224)", hf_dinov2_s)}


def hf_output(hf, x):
    """Logits of a classifier; the pooled (normalised class-token) output of a feature tower."""
    out = hf(pixel_values=x)
    return out.logits if hasattr(out, "logits") else out.pooler_output


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
        name, make_hf = MODELS[key]
        torch.manual_seed(0)
        hf = make_hf().eval()
        with tempfile.TemporaryDirectory() as tmp:
            hf.save_pretrained(tmp)
            ours = vitkit.load(tmp).eval()
        x = torch.randn(args.batch, 3, 224, 224)
        with torch.inference_mode():
            max_diff = (ours(x[:4]) - hf_output(hf, x[:4])).abs().max().item()
            runs = {"vitkit": lambda ours=ours, x=x: ours(x),
                    "transformers": lambda hf=hf, x=x: hf_output(hf, x)}
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
