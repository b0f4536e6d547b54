"""Command line: `vitkit <command> ...`. Each command lives in a small function below."""

import argparse
import sys
import tempfile
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
    import math

    import vitkit
    from vitkit.models._protocol import TokenSequence

    overrides = {k: v for k, v in (("img_size", args.img_size), ("num_classes", args.num_classes)) if v is not None}
    model = _model_from_arg(args.model, **overrides)
    spec = model.input_spec
    input_size = (spec.in_chans, *spec.img_size)
    stages = model.feature_info
    sizes = "fixed" if spec.fixed_size else f"any multiple of {spec.size_multiple}"
    rows = [
        ("model", getattr(model, "model_name", None) or args.model),
        ("family", model.config.__class__.__name__.removesuffix("Config")),
        ("params", f"{vitkit.count_params(model) / 1e6:.2f} M ({vitkit.count_params(model):,})"),
        ("GFLOPs", f"{vitkit.count_flops(model, input_size) / 1e9:.3f} per image"),
        ("input size", "x".join(map(str, input_size)) + f" ({sizes}; crop {spec.crop_pct}, {spec.interpolation})"),
        ("mean / std", f"{spec.mean} / {spec.std}"),
    ]
    if isinstance(model, TokenSequence):
        patches = math.prod(side // stages[0].reduction for side in spec.img_size)
        rows.append(("tokens", f"{patches + model.num_prefix_tokens} ({patches} patches + "
                               f"{model.num_prefix_tokens} prefix), {len(stages)} blocks of {stages[0].num_chs}"))
    else:
        rows.append(("stages", ", ".join(f"{f.num_chs}ch /{f.reduction}" for f in stages)))
    rows.append(("features / classes", f"{model.num_features} / {model.num_classes}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


# train flags spelled out for discoverability; every other TrainConfig field goes through --set key=value
_TRAIN_FLAGS = {"model": str, "data": str, "val_split": float, "output": str, "epochs": int, "batch_size": int,
                "lr": float,
                "weight_decay": float, "drop_path": float, "seed": int, "ckpt_every": int, "workers": int,
                "teacher": str, "distill": str, "device": str, "init_checkpoint": str, "labels_per_class": int,
                "label_fraction": float, "classes": str}
# vitkit pretrain: the same, without the supervised-only ones
_PRETRAIN_FLAGS = {k: v for k, v in _TRAIN_FLAGS.items()
                   if k not in ("teacher", "distill", "labels_per_class", "label_fraction", "classes")}


def _parse_set(items: list[str]) -> dict:
    import yaml

    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):
            try:  # YAML 1.1 reads "3e-3" (no dot) as a string
                parsed = float(parsed)
            except ValueError:
                pass
        values[key.strip().replace("-", "_")] = parsed
    return values


def _run_options(args, flags: dict) -> dict:
    from vitkit.training import load_recipe

    options = load_recipe(args.config)
    options.update({k: v for k in flags if (v := getattr(args, k)) is not None})
    options.update(_parse_set(args.set))
    if args.quiet:
        options["progress"] = False
    options["val_split"] = _count_or_fraction(options.get("val_split"))
    return options


def _count_or_fraction(value):
    """--val-split arrives as a float: 5000.0 is a count of images, 0.1 a fraction."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def cmd_pretrain(args) -> int:
    from vitkit.training import TrainConfig, train

    if args.nproc and args.nproc > 1:
        return _launch_torchrun(args.nproc)
    if args.config is None:
        args.config = f"{args.objective}_digits"
    options = _run_options(args, _PRETRAIN_FLAGS)
    recipe_objective = options.get("objective", "supervised")
    if recipe_objective not in ("supervised", args.objective):
        raise ValueError(f"--objective {args.objective} but recipe {args.config} is for objective {recipe_objective}")
    options["objective"] = args.objective
    summary = train(TrainConfig.from_dict(options), resume=args.resume, overwrite=args.overwrite)
    if "report" in summary:
        out, metric = Path(summary["output"]), summary["selection_metric"]
        report, best = summary["report"], summary[f"best_val_{metric}"]
        print(f"pretrained {summary['global_step']} steps in {summary['elapsed_s']:.0f} s ({args.objective})")
        if summary["selected"] == "best":
            print(f"selected on validation: {metric} {best * 100:.2f}% (epoch {summary['selected_epoch']}); test "
                  f"kNN top-1 {report.top1 * 100:.2f}% (k={report.k}, bank of {report.bank_size} training images)")
        else:
            print("nothing selected (see metrics.jsonl and eval.json); "
                  f"final model test kNN top-1 {report.top1 * 100:.2f}%")
        print(f"backbone:       {out / summary['selected']}   "
              "(vitkit.load; vitkit train --init-checkpoint fine-tunes it)")
        print(f"metrics:        {out / 'metrics.jsonl'}, {out / 'eval.json'}")
    return 0


def cmd_train(args) -> int:
    from vitkit.training import TrainConfig, train

    if args.nproc and args.nproc > 1:
        return _launch_torchrun(args.nproc)
    options = _run_options(args, _TRAIN_FLAGS)
    if options.get("objective", "supervised") != "supervised":
        raise ValueError(f"recipe {args.config} is a {options['objective']} recipe: run it with vitkit pretrain "
                         f"--objective {options['objective']}")
    summary = train(TrainConfig.from_dict(options), resume=args.resume, overwrite=args.overwrite)
    if "report" in summary:
        out = Path(summary["output"])
        selected, final = summary["report"], summary["final_report"]
        print(f"test split, {summary['selected']}/ model:")
        print(selected.table())
        print(f"\ntrained {summary['global_step']} steps in {summary['elapsed_s']:.0f} s")
        if summary["selected"] == "best":
            print(f"test top-1: selected model {selected.top1 * 100:.2f}% (best on validation, "
                  f"{summary['best_val_top1'] * 100:.2f}% val top-1, epoch {summary['selected_epoch']}); "
                  f"final model {final.top1 * 100:.2f}%")
            print(f"best model:     {out / 'best'}   (selected on validation; vitkit eval / predict take it)")
        else:
            print(f"test top-1: final model {final.top1 * 100:.2f}% (val_split 0: no selection)")
        print(f"final model:    {out / 'final'}")
        print(f"checkpoints:    {out / 'checkpoints'}   (--resume continues from the latest)")
        print(f"metrics:        {out / 'metrics.jsonl'}, {out / 'eval.json'}, {out / 'confusion.png'}")
    return 0


def _launch_torchrun(nproc: int) -> int:
    """Re-run this same command under torchrun, one process per worker, cores shared out evenly."""
    import os
    import subprocess

    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            argv.append(arg)
    # -P keeps torchrun from importing modules in the current directory; torchrun starts its workers as
    # `python -u -m vitkit` with this environment, where PYTHONSAFEPATH=1 does the same for them
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc)), "PYTHONSAFEPATH": "1"}
    cmd = [sys.executable, "-P", "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "vitkit", *argv]
    return subprocess.call(cmd, env=env)


def _load_for_inference(path: str, optimized: bool = True):
    import vitkit

    if not Path(path).is_dir():
        raise ValueError(f"{path} is not a model directory; give the best/ or final/ directory a training run wrote")
    model = vitkit.load(path, optimized=optimized).eval()
    meta = getattr(model, "metadata", {}) or {}
    return model, meta


def _eval_transform(model, meta, fallback_mean=None, fallback_std=None):
    from vitkit.data.transforms import saved_model_eval_transform

    return saved_model_eval_transform(model.input_spec, meta, fallback_mean, fallback_std,
                                      getattr(model, "pretrained_cfg", None))


def cmd_eval(args) -> int:
    import json

    import vitkit
    from vitkit.data import build_dataset
    from vitkit.data.batches import eval_batches
    from vitkit.efficiency import parse_spec, spec_to_string
    from vitkit.evaluation.classification import evaluate_classifier, save_confusion_png
    from vitkit.weights import atomic_write_text

    items = parse_spec(args.spec) if args.spec else None  # a bad spec fails before anything loads
    if args.merge_maps and not any(i.name in ("tome", "evit") for i in items or []):
        raise ValueError("--merge-maps shows token merging: give a --spec with tome (or evit)")
    # --spec replaces the spec a `vitkit optimize` directory carries, rather than stacking on it
    model, meta = _load_for_inference(args.checkpoint, optimized=items is None)
    if items is not None:
        model = vitkit.optimize(model, items)
    spec = spec_to_string(items) if items is not None else meta.get("optimize", "none")
    # the validation split the model was trained with, when it is evaluated on its own dataset
    val_split = meta.get("val_split") if meta.get("dataset") == args.data else None
    dataset = build_dataset(args.data, args.split, val_split=val_split)
    info = dataset.info
    in_chans = model.input_spec.in_chans
    if (info.in_chans, info.num_classes) != (in_chans, model.num_classes):
        raise ValueError(f"{args.data} has {info.in_chans} channel(s) and {info.num_classes} classes; the model "
                         f"takes {in_chans} and predicts {model.num_classes}")
    transform = _eval_transform(model, meta, info.mean, info.std)
    report = evaluate_classifier(model, eval_batches(dataset, transform, args.batch_size), info.num_classes,
                                 info.class_names)
    out = Path(args.out or Path(args.checkpoint) / "eval")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "eval.json", json.dumps({"data": args.data, "split": args.split, "spec": spec,
                                                     **report.to_dict()},
                                                    indent=2) + "\n")
    save_confusion_png(report, out / "confusion.png")
    written = [out / "eval.json", out / "confusion.png"]
    if args.merge_maps:
        written.append(_save_merge_maps(model, dataset, transform, args.merge_maps, out / "merge_maps"))
    print(report.table())
    print(f"\nwritten: {', '.join(map(str, written))}")
    return 0


def _save_merge_maps(model, dataset, transform, count: int, folder: Path) -> Path:
    from vitkit.efficiency.merge_map import save_merge_map

    if not hasattr(dataset, "images"):
        raise ValueError("--merge-maps needs an in-memory dataset (digits, fashion-mnist, mnist, cifar)")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(min(count, len(dataset))):
        raw = dataset.images[i : i + 1]
        save_merge_map(model, transform(raw)[0], raw[0].permute(1, 2, 0).numpy(), folder / f"{i:04d}.png")
    return folder


def cmd_optimize(args) -> int:
    import vitkit
    from vitkit.efficiency import parse_spec, spec_to_string
    from vitkit.efficiency.optimize import example_input

    items = parse_spec(args.spec)  # a bad spec fails before the model loads
    model, meta = _load_for_inference(args.checkpoint, optimized=False)
    optimized = vitkit.optimize(model, items)
    x = example_input(model, 8)
    with torch.no_grad():
        ref, out = model(x), optimized(x).float()
    agree = (ref.argmax(-1) == out.argmax(-1)).float().mean().item()
    spec = spec_to_string(items)
    vitkit.save(model, args.out, metadata={**meta, "optimize": spec})
    print(f"spec: {spec}")
    print(f"on 8 random inputs vs the original: max |logit diff| {(ref - out).abs().max().item():.3g}, "
          f"top-1 agreement {agree * 100:.0f}%")
    print(f"written: {args.out} (float weights + spec; vitkit.load applies the spec, optimized=False skips it)")
    return 0


def cmd_export(args) -> int:
    import vitkit
    from vitkit.efficiency import parse_spec, spec_to_string
    from vitkit.efficiency.onnx_export import (
        OnnxModel,
        calibration_batches,
        check_onnx_spec,
        export_onnx,
        quantize_onnx_int8,
    )
    from vitkit.efficiency.optimize import example_input

    if not args.onnx:
        raise ValueError("nothing to export: give --onnx OUT.onnx")
    items = parse_spec(args.spec)
    check_onnx_spec(items)
    if args.calibrate is not None and not (args.int8 and args.data and args.calibrate > 0):
        raise ValueError("--calibrate N (static int8) needs --int8, --data (its train split calibrates) and N > 0")
    if args.static_linear and args.calibrate is None:
        raise ValueError("--static-linear needs --calibrate N: static int8 fixes activation ranges from N images")
    model, meta = _load_for_inference(args.checkpoint, optimized=False)  # ONNX starts from the float model
    reference = vitkit.optimize(model, items) if items else model
    out = Path(args.onnx)
    if args.int8:
        calibration = calibration_batches(model, args.data, args.calibrate) if args.calibrate else None
        with tempfile.TemporaryDirectory() as tmp:
            quantize_onnx_int8(export_onnx(reference, Path(tmp) / "fp32.onnx"), out, calibration=calibration,
                               static_linear=args.static_linear)
    else:
        export_onnx(reference, out)
    session = OnnxModel(out, model.config)
    kind = "fp32"
    if args.int8:
        kind = ("int8, static convolutions and linear layers" if args.static_linear else
                "int8, static convolutions, dynamic linear layers" if args.calibrate else "int8, dynamic linear layers")
    print(f"written: {out} ({out.stat().st_size / 1e6:.2f} MB, {kind}, "
          f"spec {spec_to_string(items)}, dynamic batch)")
    for batch in (1, 7):
        x = example_input(model, batch)
        with torch.no_grad():
            diff = (session(x) - reference(x)).abs().max().item()
        print(f"batch {batch}: max |onnxruntime - pytorch fp32| = {diff:.3g}")
    if args.data:
        from vitkit.data import build_dataset
        from vitkit.data.batches import eval_batches

        dataset = build_dataset(args.data, "test")
        transform = _eval_transform(model, meta, dataset.info.mean, dataset.info.std)
        same = total = 0
        worst = 0.0
        for images, _ in eval_batches(dataset, transform, 256):
            with torch.no_grad():
                ref, got = reference(images), session(images)
            same += (ref.argmax(-1) == got.argmax(-1)).sum().item()
            total += len(images)
            worst = max(worst, (ref - got).abs().max().item())
        print(f"{args.data} test ({total} images): top-1 identical for {same}/{total}, max |diff| {worst:.3g}")
    return 0


def cmd_predict(args) -> int:
    import numpy as np

    from vitkit.data.images import UnreadableImageError, decode_image

    model, meta = _load_for_inference(args.checkpoint)
    names = meta.get("class_names") or [str(i) for i in range(model.num_classes)]
    transform = _eval_transform(model, meta)
    mode = "L" if model.input_spec.in_chans == 1 else "RGB"
    for path in args.images:
        try:  # decoded as the folder datasets do: bombs refused, 16-bit scaled, errors naming the file
            array = np.asarray(decode_image(path, mode))
        except UnreadableImageError as err:
            raise ValueError(str(err)) from err
        x = torch.from_numpy(array.copy()).reshape(array.shape[0], array.shape[1], -1).permute(2, 0, 1)[None]
        with torch.no_grad():
            probs = model(transform(x)).softmax(-1)[0]
        top = probs.topk(min(args.topk, len(names)))
        shown = ", ".join(f"{names[i]} {p * 100:.1f}%" for p, i in zip(top.values.tolist(), top.indices.tolist(),
                                                                       strict=True))
        print(f"{path}: {shown}")
    return 0


def cmd_bench(args) -> int:
    import shlex

    from vitkit.bench import make_plan, run_bench

    plan = make_plan(args.models or [], args.specs, checkpoint=args.checkpoint, data=args.data, peers=args.peers,
                     batch_sizes=args.batch_sizes, quick=args.quick, threads=args.threads or torch.get_num_threads(),
                     device=args.device, repeats=args.repeats, eval_limit=args.eval_limit, timeout_s=args.timeout_s,
                     memory_limit_mb=args.memory_limit_mb)
    results = run_bench(plan, args.out, progress=not args.quiet,
                        command=shlex.join(["vitkit", *(args.argv or [])]))
    failed = len(results["failed"])
    print(f"{len(results['rows']) - failed} configurations measured, {failed} failed; report: {args.out}/report.html")
    return 0 if failed < len(results["rows"]) else 1


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{option} takes comma-separated numbers, got {text!r}") from None


def _ints(text: str, option: str) -> tuple[int, ...]:
    values = _floats(text, option)
    if any(v != int(v) for v in values):
        raise ValueError(f"{option} takes comma-separated whole numbers, got {text!r}")
    return tuple(int(v) for v in values)


def _listed(values) -> str:
    return ",".join(f"{v:g}" for v in values)


def cmd_probe(args) -> int:
    from vitkit.probe import FeatureCache, ProbeOptions, run_probe, write_all
    from vitkit.probe.report import table

    options = ProbeOptions(
        data=args.data, protocols=tuple(p.strip() for p in args.protocols.split(",") if p.strip()),
        val_split=_count_or_fraction(args.val_split), blocks=args.blocks,
        tokens=args.tokens, ks=_ints(args.k, "--k"), temperature=args.temperature, lrs=_floats(args.lrs, "--lrs"),
        linear_epochs=args.linear_epochs, batchnorm=args.batchnorm, Cs=_floats(args.C, "--C"),
        logreg_max_iter=args.logreg_max_iter, ways=args.ways,
        shots=_ints(args.shots, "--shots"), queries=args.queries, episodes=args.episodes,
        feature_dtype=args.feature_dtype, batch_size=args.batch_size, seed=args.seed, progress=not args.quiet)
    report = run_probe(args.backbones, options, FeatureCache(args.cache_dir))
    written = write_all(report, args.out)
    print(table(report))
    forwarded = sum(r["forward_images"] for r in report["results"])
    print(f"\nforward passes: {forwarded} images (features cached in {report['cache_dir']})")
    print(f"written: {', '.join(map(str, written))}")
    return 0


def _names(text: str | None) -> list[str] | None:
    """A comma-separated list; None (option not given) stays None, "none" is the empty list."""
    if text is None:
        return None
    return [] if text.strip().lower() == "none" else [v.strip() for v in text.split(",") if v.strip()]


def cmd_trust(args) -> int:
    from vitkit.reporting import check_output_dir
    from vitkit.trust import TrustOptions, markdown_summary, run_trust, write_report

    out = check_output_dir(Path(args.out), "vitkit trust", markers=("results.json", "predictions"))
    if not Path(args.checkpoint).is_dir():
        raise ValueError(f"{args.checkpoint} is not a model directory (expected e.g. runs/fashion_mnist/best)")
    options = TrustOptions(
        data=args.data, val_split=_count_or_fraction(args.val_split), alphas=_floats(args.alphas, "--alphas"),
        conformal_scores=tuple(_names(args.conformal_scores)), corruptions=_names(args.corruptions),
        severities=_ints(args.severities, "--severities"), sweep_images=args.sweep_images or None,
        baseline=args.baseline, ood=_names(args.ood), knn_k=args.knn_k, explain_methods=_names(args.explain),
        explain_images=args.explain_images, batch_size=args.batch_size, seed=args.seed, progress=not args.quiet)
    results, figures = run_trust(args.checkpoint, out, options)
    write_report(results, figures, out)
    print(markdown_summary(results))
    print(f"written: {out}/report.html, results.json and figures")
    return 0


def cmd_zoo(args) -> int:
    from vitkit.zoo import markdown_table, merge_zoo, run_zoo

    if args.merge:
        results = merge_zoo(args.merge.split(","), args.out, threads=args.threads, remeasure=not args.no_remeasure,
                            progress=not args.quiet, command="vitkit " + " ".join(args.argv))
        print(markdown_table(results))
        print(f"written: {args.out}/report.html, results.json, results.csv, pareto.png")
        return 0
    results = run_zoo(_names(args.models), data=args.data, budget_min=args.budget_min, out=args.out,
                      seeds=_ints(args.seeds, "--seeds"), threads=args.threads, progress=not args.quiet,
                      command="vitkit " + " ".join(args.argv))
    print(markdown_table(results))
    print(f"written: {args.out}/report.html, results.json, results.csv, pareto.png; training runs in {args.out}/runs")
    return 0

PRETRAIN_OBJECTIVES = ("mae", "dino")


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

    p = sub.add_parser("train", help="train a model (default: the digits recipe, a few minutes on a CPU)")
    p.add_argument("--config", default="digits", help="recipe YAML path or shipped recipe name (default: digits)")
    for name, kind in _TRAIN_FLAGS.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other training option")
    p.add_argument("--resume", nargs="?", const=True, default=None,
                   help="continue from the latest checkpoint in --output, or from the given checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="--output holds an earlier run: remove its checkpoints, models and metrics and start over")
    p.add_argument("--nproc", type=int, help="launch this many processes with torchrun (DDP)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("pretrain",
                       help="self-supervised pretraining (mae, dino) without labels; the output is a backbone")
    p.add_argument("--objective", required=True, choices=PRETRAIN_OBJECTIVES)
    p.add_argument("--config", default=None, help="recipe YAML path or shipped recipe name (default: OBJECTIVE_digits)")
    for name, kind in _PRETRAIN_FLAGS.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other option, e.g. objective_args={mask_ratio: 0.6}")
    p.add_argument("--resume", nargs="?", const=True, default=None,
                   help="continue from the latest checkpoint in --output, or from the given checkpoint")
    p.add_argument("--overwrite", action="store_true", help="--output holds an earlier run: start over")
    p.add_argument("--nproc", type=int, help="launch this many processes with torchrun (DDP)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("eval", help="top-1/top-5/loss, per-class accuracy and a confusion matrix PNG")
    p.add_argument("checkpoint", help="model directory (e.g. runs/digits/best)")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test", choices=("train", "val", "test"),
                   help="val: the validation split carved from the training data (as the model was trained)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", help="where eval.json and confusion.png go (default: CHECKPOINT/eval)")
    p.add_argument("--spec", help="evaluate the optimized model, e.g. 'tome:r=4,int8' (see vitkit optimize -h)")
    p.add_argument("--merge-maps", type=int, default=0, metavar="N",
                   help="with a tome/evit spec: PNGs of which patches merged, for the first N images")
    p.set_defaults(func=cmd_eval)

    from vitkit.efficiency.spec import valid_items_help

    p = sub.add_parser("optimize", help="apply a speed-up spec (tome, evit, bf16, int8, compile) and save",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="spec items (comma-separated; parameters after colons):\n" + valid_items_help())
    p.add_argument("checkpoint", help="model directory (e.g. runs/fashion_mnist/best)")
    p.add_argument("--spec", required=True, help="e.g. 'tome:r=4,int8' or 'evit:keep=0.7:blocks=[2,4]'")
    p.add_argument("--out", required=True, help="directory for the optimized model")
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser("export", help="ONNX with dynamic batch (optionally int8), checked in onnxruntime")
    p.add_argument("checkpoint", help="model directory (e.g. runs/fashion_mnist/best)")
    p.add_argument("--onnx", help="output .onnx path")
    p.add_argument("--int8", action="store_true",
                   help="onnxruntime int8: linear layers dynamic int8; the head and the first convolution stay float")
    p.add_argument("--calibrate", type=int, metavar="N",
                   help="with --int8: the convolutions after the first become static int8, activation ranges fixed "
                        "from N images of --data's train split (a conv stem's stages)")
    p.add_argument("--static-linear", action="store_true",
                   help="with --calibrate: the linear layers static int8 too (QLinearMatMul; no faster here)")
    p.add_argument("--spec", help="token reduction to build into the graph, e.g. 'tome:r=13' (compared with the same "
                                  "spec in PyTorch)")
    p.add_argument("--data", help="also compare top-1 with PyTorch on this dataset's test split")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="accuracy, speed, memory and FLOPs of models x specs, with peers; HTML report",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Specs are separated by commas; the items of one spec are joined with '+', e.g.\n"
                              "  --specs none,bf16,tome:r=8,tome:r=8+int8,onnx,onnx-int8,tome:r=8+onnx-int8\n"
                              "(onnx / onnx-int8 / onnx-int8-static last: the spec's token reduction exported and run "
                              "in onnxruntime; -static calibrates convolutions on --data's train split)\n"
                              "spec items:\n"
                              + valid_items_help())
    p.add_argument("--models", help="registered names and/or saved model directories, comma-separated")
    p.add_argument("--specs", default="none", help="optimization specs to compare (default: none)")
    p.add_argument("--checkpoint", help="a trained model directory (also accepted in --models)")
    p.add_argument("--data", help="dataset whose test split gives the trained models' top-1 and loss")
    p.add_argument("--peers", help="same weights in other libraries: hf (transformers), timm")
    p.add_argument("--batch-sizes", help="comma-separated (default 1,32; --quick 1,8)")
    p.add_argument("--quick", action="store_true", help="CI-sized: fewer repeats, short runs, 1000 eval images")
    p.add_argument("--repeats", type=int, help="timed runs per configuration (median; default 10, quick 5)")
    p.add_argument("--eval-limit", type=int, help="evaluate on the first N test images only")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=argparse.SUPPRESS, help="torch threads in every measurement "
                   "(default: torch's; recorded)")
    p.add_argument("--timeout-s", type=float, help="a configuration's process is stopped and recorded as failed "
                   "after this long")
    p.add_argument("--memory-limit-mb", type=int, help="address-space limit per process: past it a configuration "
                   "fails with out of memory instead of swapping the machine")
    p.add_argument("--out", required=True, help="report directory (replaced as a whole when the run completes)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=cmd_bench)

    from vitkit.probe.run import ProbeOptions

    probe = ProbeOptions(data="digits")  # the probe flags' defaults are the options' own
    p = sub.add_parser("probe", help="frozen-feature kNN, linear probe and few-shot of backbones, on cached features",
                       description="Compare backbones on frozen features: BACKBONE is a model directory, "
                       "random:DIR_OR_NAME (same architecture, fresh seeded weights), a registered model name "
                       "(random init) or 'pixels'. Selection (k, learning rate, C) uses the validation split; the "
                       "test split is evaluated once.")
    p.add_argument("backbones", nargs="+", metavar="BACKBONE")
    p.add_argument("--data", default="digits", help="dataset (default: digits)")
    p.add_argument("--protocols", default=",".join(probe.protocols),
                   help="comma-separated: knn, linear, logreg, fewshot")
    p.add_argument("--val-split", type=float, help="validation images carved from train (count or fraction)")
    p.add_argument("--blocks", type=int, help="last blocks/stages cached and offered to the linear grid (default: "
                   "4, or all a model has when fewer)")
    p.add_argument("--tokens", default=probe.tokens, help="feature for knn/logreg/fewshot: pooled, cls, patch_mean, "
                   "cls+patch_mean (of the last --blocks blocks)")
    p.add_argument("--k", default=_listed(probe.ks), help="kNN neighbour counts (selected on val)")
    p.add_argument("--temperature", type=float, default=probe.temperature, help="kNN vote temperature")
    p.add_argument("--lrs", default=_listed(probe.lrs), help="linear-probe learning rates")
    p.add_argument("--linear-epochs", type=int, default=probe.linear_epochs)
    p.add_argument("--batchnorm", action="store_true", help="BatchNorm (no affine) before the linear layer (MAE)")
    p.add_argument("--C", default=_listed(probe.Cs), help="logreg inverse regularisation strengths")
    p.add_argument("--logreg-max-iter", type=int, default=probe.logreg_max_iter,
                   help="L-BFGS iterations per C (warm-started)")
    p.add_argument("--ways", type=int, default=probe.ways)
    p.add_argument("--shots", default=_listed(probe.shots))
    p.add_argument("--queries", type=int, default=probe.queries)
    p.add_argument("--episodes", type=int, default=probe.episodes)
    p.add_argument("--feature-dtype", default=probe.feature_dtype, help="cache storage: float32 or float16")
    p.add_argument("--batch-size", type=int, default=probe.batch_size)
    p.add_argument("--seed", type=int, default=probe.seed, help="random-init weights and few-shot episodes")
    p.add_argument("--cache-dir", help="feature cache (default: $VITKIT_CACHE_DIR or ~/.cache/vitkit/features)")
    p.add_argument("--out", default="runs/probe", help="report directory (probe.json, .csv, .html, .png)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=cmd_probe)

    from vitkit.trust.run import TrustOptions

    trust = TrustOptions()
    p = sub.add_parser("trust", help="calibration, conformal sets, corruptions, OOD detection and explanations of a "
                                     "trained classifier, in one report")
    p.add_argument("checkpoint", help="trained model directory (e.g. runs/fashion_mnist/best)")
    p.add_argument("--data", help="dataset (default: the one the checkpoint was trained on)")
    p.add_argument("--val-split", type=float, help="validation images carved from train (default: the training run's)")
    p.add_argument("--alphas", default=_listed(trust.alphas), help="conformal miscoverage levels")
    p.add_argument("--conformal-scores", default=",".join(trust.conformal_scores), help="lac, aps, raps")
    p.add_argument("--corruptions", help="comma-separated corruption names (default: all; 'none' skips the sweep)")
    p.add_argument("--severities", default=_listed(trust.severities), help="corruption severities (1-5)")
    p.add_argument("--sweep-images", type=int, default=trust.sweep_images,
                   help="test images per corruption and severity (0: all)")
    p.add_argument("--baseline", default=trust.baseline,
                   help="reference of the mean corruption error: 'pixels' (logistic regression) or a model directory")
    p.add_argument("--ood", help="OOD sets: heldout, noise, CORRUPTION:SEVERITY or dataset specs (default: heldout "
                                 "when the model left classes out, digits, noise, severest corruptions; 'none' skips)")
    p.add_argument("--knn-k", type=int, default=trust.knn_k, help="deep-kNN OOD score: the k-th neighbour")
    p.add_argument("--explain", help="explanation methods (default: all the family supports; 'none' skips)")
    p.add_argument("--explain-images", type=int, default=trust.explain_images)
    p.add_argument("--batch-size", type=int, default=trust.batch_size)
    p.add_argument("--seed", type=int, default=trust.seed, help="corruptions, noise, randomised scores, random maps")
    p.add_argument("--out", default="runs/trust", help="report directory (report.html, results.json, PNGs)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=cmd_trust)

    p = sub.add_parser("zoo", help="train a small config of every model family under the same wall budget and "
                                   "compare accuracy, cost, speed, memory and calibration in one report")
    p.add_argument("--data", default="fashion-mnist", help="dataset (default: fashion-mnist)")
    p.add_argument("--budget-min", type=float, default=10.0, help="training minutes per model and seed (default: 10)")
    p.add_argument("--models", help="comma-separated zoo entries (default: all, recipes/zoo/*.yaml)")
    p.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1,2 (top-1 and ECE are averaged)")
    p.add_argument("--out", default="runs/zoo", help="report directory (report.html, results.json/csv, runs/)")
    p.add_argument("--merge", metavar="DIR,DIR", help="instead of training: one report from these zoo report "
                   "directories (same data, budget and seeds), inference speed and memory timed again here")
    p.add_argument("--no-remeasure", action="store_true", help="with --merge: keep each run's own timings")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=cmd_zoo)

    p = sub.add_parser("predict", help="top-k classes for image files")
    p.add_argument("checkpoint", help="model directory (e.g. runs/digits/best)")
    p.add_argument("images", nargs="+")
    p.add_argument("--topk", type=int, default=5)
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    from vitkit.training import TrainingDiverged

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    # expected failures (bad options, files, data, configs; a full disk; a busy output directory) are one
    # line naming what was wrong; anything else is a bug and keeps its traceback
    except (ValueError, OSError, RuntimeError, TrainingDiverged) as err:
        print(f"vitkit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
