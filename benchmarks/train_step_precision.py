"""fp32 vs bf16-autocast training steps of one model, interleaved in one process (what `amp: auto` buys).

    python benchmarks/train_step_precision.py [--recipe fashion_mnist] [--batch 256] [--repeats 7]

Each sample is a few full steps (forward, backward, AdamW) on the same fixed batch, with the recipe's
attention kernel; the two precisions alternate (ABBA), median of --repeats. Prints seconds per step and
the ratio, with the CPU capability and whether it has native bf16 (AVX512-BF16 / AMX).
"""

import argparse
import sys
from contextlib import nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import vitkit
from vitkit.bench.timing import machine_line, steady_allocator, summary, time_interleaved
from vitkit.efficiency.precision import cpu_has_native_bf16
from vitkit.training import load_recipe


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="fashion_mnist")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed sample")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steady_allocator()
    recipe = load_recipe(args.recipe)
    torch.manual_seed(0)
    model = vitkit.create_model(recipe["model"], num_classes=10, in_chans=1, **recipe.get("model_kwargs", {}))
    size = model.config.img_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(args.batch, 1, size, size), torch.randint(0, 10, (args.batch,))
    backend = recipe.get("sdpa_backend")

    def steps(amp: bool):
        def run():
            for _ in range(args.steps):
                kernel = sdpa_kernel(getattr(SDPBackend, backend.upper())) if backend else nullcontext()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp), kernel:
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        return run

    times = time_interleaved({"fp32": steps(False), "bf16": steps(True)}, repeats=args.repeats, warmup=2)
    per_step = {name: summary(t, 1)["median_s"] / args.steps for name, t in times.items()}
    print(f"machine: {machine_line()}, cpu capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16: {cpu_has_native_bf16()}")
    print(f"{args.recipe} model, batch {args.batch}: fp32 {per_step['fp32']:.3f} s/step, bf16 autocast "
          f"{per_step['bf16']:.3f} s/step, bf16 speed-up {per_step['fp32'] / per_step['bf16']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
