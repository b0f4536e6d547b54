"""Command line: `vitkit <command> ...`. Each command lives in a small function below."""

import argparse
import sys
from pathlib import Path

import torch


def _model_from_arg(spec: str, **overrides):
    """A registered model name, or a directory written by vitkit.save / save_pretrained."""
    import vitkit

    if Path(spec).is_dir():
        return vitkit.load(spec, **overrides)
    return vitkit.create_model(spec, **overrides)


def cmd_list(args) -> int:
    import vitkit

    names = vitkit.list_models(args.pattern)
    print("\n".join(names) if names else f"no model matches {args.pattern!r}")
    return 0 if names else 1


def cmd_info(args) -> int:
    import vitkit

    overrides = {k: v for k, v in (("img_size", args.img_size), ("num_classes", args.num_classes)) if v is not None}
    model = _model_from_arg(args.model, **overrides)
    c = model.config
    input_size = (c.in_chans, c.img_size, c.img_size)
    num_patches = model.patch_embed.num_patches
    rows = [
        ("model", getattr(model, "model_name", None) or args.model),
        ("params", f"{vitkit.count_params(model) / 1e6:.2f} M ({vitkit.count_params(model):,})"),
        ("GFLOPs", f"{vitkit.count_flops(model, input_size) / 1e9:.3f} per image"),
        ("input size", "x".join(map(str, input_size))),
        ("tokens", f"{num_patches + model.num_prefix_tokens} ({num_patches} patches + "
                   f"{model.num_prefix_tokens} prefix)"),
        ("embed_dim / depth / heads", f"{c.embed_dim} / {c.depth} / {c.num_heads}"),
        ("classes / pool", f"{c.num_classes} / {c.global_pool or 'none'}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitkit", description=__doc__)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered model names")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'deit_*'")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="params, GFLOPs, tokens and input size of a model")
    p.add_argument("model", help="registered model name or saved model directory")
    p.add_argument("--img-size", type=int)
    p.add_argument("--num-classes", type=int)
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"vitkit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
