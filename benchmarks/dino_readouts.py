"""A DINO run examined on the validation split (bank: the training images, queries: the validation images; no
test image is read): kNN top-1 (k=20, T=0.07) of the pooled feature and of layout-keeping readouts (2x2
quadrant means, all tokens) of the last block, beside a random-init network and raw pixels; and, for each
training checkpoint given, the student against the teacher.

    python benchmarks/dino_readouts.py --run runs/dino_knn_t5 [--checkpoints step-00003861.pt,step-00004290.pt]
"""

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import vitkit
from vitkit.bench.timing import machine_line
from vitkit.data import build_dataset
from vitkit.data.transforms import eval_transform
from vitkit.evaluation.knn import knn_top1
from vitkit.probe.features import pixel_features


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a dino_knn.py output directory (best/, checkpoints/)")
    parser.add_argument("--checkpoints", default="", help="comma-separated names under <run>/checkpoints")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_line()}, cpu capability {torch.backends.cpu.get_cpu_capability()}", flush=True)
    run = Path(args.run)
    cfg = json.loads((run / "config.json").read_text())
    bank, queries = build_dataset(cfg["data"], "train"), build_dataset(cfg["data"], "val")
    info = bank.info

    def knn(train_features, val_features) -> str:
        return f"{knn_top1(train_features, bank.targets, val_features, queries.targets, info.num_classes) * 100:.2f}%"

    def readouts(model, dataset) -> dict[str, torch.Tensor]:
        out: dict[str, list] = {}
        with torch.no_grad():
            for i in range(0, len(dataset), 1000):
                x = eval_transform(dataset.images[i:i + 1000], model.input_spec.img_size[0], 1.0, info.mean, info.std)
                final, maps = model.forward_intermediates(x, output_fmt="NCHW")
                out.setdefault("pooled (shipped)", []).append(model.forward_head(final, pre_logits=True))
                for grid in (2, 4):
                    out.setdefault(f"{grid}x{grid} means", []).append(F.adaptive_avg_pool2d(maps[-1], grid).flatten(1))
        return {name: torch.cat(parts) for name, parts in out.items()}

    def build(state=None):
        torch.manual_seed(0)
        model = vitkit.create_model(cfg["model"], num_classes=0, **cfg.get("model_kwargs", {}))
        if state is not None:
            model.load_state_dict(state)
        return model.eval()

    pixels = lambda d: pixel_features(d, info.mean, info.std)["pooled"]  # noqa: E731
    print(f"raw pixels: {knn(pixels(bank), pixels(queries))}")
    print("| readout | DINO (best/) | random init |\n|---|---|---|")
    dino, random = vitkit.load(str(run / "best")).eval(), build()
    d_bank, d_val, r_bank, r_val = readouts(dino, bank), readouts(dino, queries), readouts(random, bank), \
        readouts(random, queries)
    for name in d_bank:
        print(f"| {name} | {knn(d_bank[name], d_val[name])} | {knn(r_bank[name], r_val[name])} |", flush=True)
    for name in filter(None, args.checkpoints.split(",")):
        state = torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)["model"]
        for who in ("student", "teacher"):
            model = build({k[len(who) + 1:]: v for k, v in state.items() if k.startswith(who + ".")})
            pooled = [readouts(model, d)["pooled (shipped)"] for d in (bank, queries)]
            print(f"{name} {who}: {knn(*pooled)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
