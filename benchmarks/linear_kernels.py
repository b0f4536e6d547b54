"""Linear layers in CPU inference: MKL (`F.linear` + activation) against oneDNN (activation fused), per layer
shape and per model, the measurements behind `vitkit.layers.apply_linear`'s thresholds.

    python benchmarks/linear_kernels.py --sweep [--threads 2]
    python benchmarks/linear_kernels.py --models beit_base_patch16_224:8,pvt_v2_b0:1 [--rounds 20] [--threads 2]

`--sweep` times one layer (fp32, no grad) at transformer shapes (16..3,136 rows, 64..768 channels) with and
without a GELU after it: the median of interleaved calls, MKL time / oneDNN time (> 1: oneDNN faster).
`--models` runs each model in one process four ways, interleaved in alternating order, median per way:
oneDNN as shipped, oneDNN only where an activation is fused, MKL everywhere (vitkit before), and
transformers on the same weights (`vitkit bench`'s peer); prints speed relative to transformers.
Results with machine and date: BENCHMARKS.md.
"""

import argparse
import itertools
import statistics

import torch
import torch.nn.functional as F

import vitkit
import vitkit.layers.linear as linear_module
from vitkit.bench.timing import machine_line, time_interleaved

ROWS = (16, 64, 197, 784, 3136)
SHAPES = ((64, 256), (256, 64), (128, 128), (128, 512), (192, 576), (192, 768), (256, 1024), (384, 384),
          (384, 1536), (768, 768))


def medians(fns: dict, rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, interleaved ABBA after warm-up (the bench's timing)."""
    return {name: statistics.median(t) for name, t in time_interleaved(fns, repeats=rounds, warmup=3).items()}


def sweep() -> None:
    op = linear_module._onednn_linear
    print("| rows | in -> out | multiply-adds | GELU fused | MKL / oneDNN |")
    print("|---|---|---|---|---|")
    for rows, (k, n), gelu in itertools.product(ROWS, SHAPES, (False, True)):
        x, w, b = torch.randn(rows, k), torch.randn(n, k), torch.randn(n)
        act, post_op = (F.gelu, ("gelu", "none")) if gelu else ((lambda y: y), ("none", ""))
        fns = {"mkl": lambda x=x, w=w, b=b, act=act: act(F.linear(x, w, b)),
               "onednn": lambda x=x, w=w, b=b, post_op=post_op: op(x, w, b, post_op[0], [], post_op[1])}
        with torch.no_grad():
            t = medians(fns, rounds=25)
        print(f"| {rows} | {k} -> {n} | {rows * k * n / 1e6:.2f}M | {'yes' if gelu else 'no'} | "
              f"{t['mkl'] / t['onednn']:.2f} |", flush=True)


def models(specs: str, rounds: int) -> None:
    from vitkit.bench.variants import build_peer

    op, plain_min = linear_module._onednn_linear, linear_module.ONEDNN_MIN_MACS

    def way(model, x, onednn: bool, plain: int):
        def run():
            linear_module._onednn_linear = op if onednn else None
            linear_module.ONEDNN_MIN_MACS = plain
            return model(x)
        return run

    print("| model | batch | rounds | oneDNN (as shipped) | oneDNN where an activation is fused | MKL everywhere "
          "| transformers |")
    print("|---|---|---|---|---|---|---|")
    try:
        for spec in specs.split(","):
            name, batch = spec.rsplit(":", 1)
            torch.manual_seed(0)
            model = vitkit.create_model(name).eval()
            peer = build_peer(model, "hf").eval()
            size = model.input_spec.img_size
            x = torch.randn(int(batch), model.input_spec.in_chans, *size)
            fns = {"shipped": way(model, x, True, plain_min), "fused_only": way(model, x, True, 1 << 62),
                   "mkl": way(model, x, False, plain_min), "hf": lambda peer=peer, x=x: peer(x)}
            with torch.inference_mode():
                t = medians(fns, rounds)
            ratio = {k: t["hf"] / v for k, v in t.items()}
            print(f"| {name} | {batch} | {rounds} | {ratio['shipped']:.3f} | {ratio['fused_only']:.3f} | "
                  f"{ratio['mkl']:.3f} | 1.000 |", flush=True)
    finally:
        linear_module._onednn_linear, linear_module.ONEDNN_MIN_MACS = op, plain_min


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="per layer shape")
    parser.add_argument("--models", help="name:batch[,name:batch...] against transformers")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.sweep and not args.models:
        parser.error("give --sweep and/or --models")
    if linear_module._onednn_linear is None:
        parser.error("this PyTorch build has no oneDNN linear op: nothing to compare")
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_line()}, cpu capability {torch.backends.cpu.get_cpu_capability()}", flush=True)
    if args.sweep:
        sweep()
    if args.models:
        models(args.models, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
