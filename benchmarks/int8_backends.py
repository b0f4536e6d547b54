"""Which int8 path is fastest here: torch.ao dynamic quantization, onnxruntime (dynamic or static), or torchao.

    python benchmarks/int8_backends.py [--model vit_small_patch16_224] [--batch 32] [--repeats 5]

Same model, same input, one process, interleaved, median; ratios against fp32 eager. With --torchao,
torchao's int8 is measured too when it imports (`pip install torchao`; not a vitkit dependency). On
this 2-core machine that run did not finish within 10 minutes for ViT-S at batch 32.
"""

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch

import vitkit
from vitkit.bench.timing import machine_line, steady_allocator, summary, time_interleaved
from vitkit.efficiency.onnx_export import OnnxModel, export_onnx, quantize_onnx_int8


def torchao_variants(model, example):
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as err:
        print(f"torchao not measured: {err}", file=sys.stderr)
        return {}
    eager = copy.deepcopy(model)
    quantize_(eager, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda m, name: (
        isinstance(m, torch.nn.Linear) and not name.startswith("head")))
    variants = {"torchao int8 (eager)": eager}
    try:
        compiled = torch.compile(copy.deepcopy(eager))
        compiled(example)
        variants["torchao int8 + compile"] = compiled
    except Exception as err:  # noqa: BLE001
        print(f"torchao + compile failed: {err}", file=sys.stderr)
    return variants


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--torchao", action="store_true", help="also measure torchao int8 (eager and compiled)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steady_allocator()  # eager PyTorch would otherwise page-fault its activations in every call
    torch.manual_seed(0)
    model = vitkit.create_model(args.model).eval()
    c = model.config
    x = torch.randn(args.batch, c.in_chans, c.img_size, c.img_size)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        onnx_fp32 = export_onnx(model, Path(tmp) / "m.onnx")
        variants = {
            "fp32 eager": model,
            "torch.ao dynamic int8": vitkit.optimize(model, "int8"),
            "onnxruntime fp32": OnnxModel(onnx_fp32),
            "onnxruntime dynamic int8": OnnxModel(quantize_onnx_int8(onnx_fp32, Path(tmp) / "m8.onnx")),
            # speed only: random weights, so random calibration images are as good as any
            "onnxruntime static int8 (calibrated)": OnnxModel(quantize_onnx_int8(
                onnx_fp32, Path(tmp) / "m8s.onnx", calibration=[torch.randn_like(x[:8]) for _ in range(4)],
                static_linear=True)),
        }
        if args.torchao:
            variants.update(torchao_variants(model, x))
        ref = model(x)
        diffs = {name: (m(x).float() - ref).abs().max().item() for name, m in variants.items()}
        times = time_interleaved({n: (lambda m=m: m(x)) for n, m in variants.items()}, repeats=args.repeats)
    base = summary(times["fp32 eager"], args.batch)["img_per_s"]
    print(f"machine: {machine_line()}\nmodel: {args.model}, batch {args.batch}, median of {args.repeats}\n")
    print("| int8 path | img/s (min-max) | vs fp32 eager | max abs logit diff |\n|---|---|---|---|")
    for name, t in times.items():
        s = summary(t, args.batch)
        print(f"| {name} | {s['img_per_s']:.1f} ({args.batch / s['max_s']:.1f}-{args.batch / s['min_s']:.1f}) | "
              f"{s['img_per_s'] / base:.2f}x | {diffs[name]:.2g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
