"""What a `vitkit bench` run will measure, checked in full before anything runs."""

import dataclasses
import os
from pathlib import Path

from .variants import PEERS, RUNTIMES, canonical_variant, needs_calibration, uses_onnxruntime


@dataclasses.dataclass
class ModelEntry:
    name: str  # as shown in reports
    source: str  # registry name, or absolute path of a saved model directory
    is_checkpoint: bool
    img_size: int
    in_chans: int
    num_classes: int
    saved_spec: str | None = None  # the spec `vitkit optimize` saved with it (bench measures its float weights)
    peer_keys: list[str] = dataclasses.field(default_factory=list)  # "peer:hf", ... that can run this model


@dataclasses.dataclass
class BenchPlan:
    models: list[ModelEntry]
    variants: list[str]  # canonical specs and runtimes; "none" first
    peers: list[str]  # keys of PEERS
    batch_sizes: list[int]
    data: str | None = None
    quick: bool = False
    threads: int = 1
    device: str = "cpu"
    repeats: int = 10
    warmup: int = 3
    latency_runs: int = 50
    min_run_s: float = 0.2
    eval_limit: int | None = None
    timeout_s: float | None = None
    memory_limit_mb: int | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _split(text: str | list[str] | None) -> list[str]:
    if text is None:
        return []
    if isinstance(text, str):
        from ..efficiency.spec import split_top_level

        text = split_top_level(text, ",")
    return [t.strip() for t in text if t.strip()]


def _resolve_model(text: str, peers: list[str], notes: list[str]) -> ModelEntry:
    path = Path(text).expanduser()
    if path.is_dir():
        from ..weights import load

        model = load(path)  # loads once here so that a broken checkpoint fails now
        spec = (getattr(model, "metadata", None) or {}).get("optimize")
        name = path.name if path.name not in ("best", "final") else f"{path.parent.name}/{path.name}"
        entry = ModelEntry(name, str(path.resolve()), True, *_input_of(model), saved_spec=spec)
    elif os.sep in text or text.startswith("."):
        raise ValueError(f"model directory {text} does not exist")
    else:
        import torch

        from ..models import create_model

        with torch.device("meta"):  # the shapes only: no memory, no initialisation
            model = create_model(text)
        entry = ModelEntry(text, text, False, *_input_of(model))
    entry.peer_keys = _peers_for(entry.name, model.config, peers, notes)
    return entry


def _input_of(model) -> tuple[int, int, int]:
    """(image side, channels, classes) the bench feeds and reads, from the model's `input_spec` (every family
    has one; not every config has an img_size: ConvNeXt takes any size)."""
    spec = model.input_spec
    return spec.img_size[0], spec.in_chans, model.num_classes


def _peers_for(name: str, config, peers: list[str], notes: list[str]) -> list[str]:
    """The peers that can run this model; why each other cannot goes to the notes."""
    keys = []
    for peer in peers:
        library = PEERS[peer]
        try:
            __import__(library)
        except Exception as err:  # noqa: BLE001 - timm raises more than ImportError when torchvision is broken
            reason = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
            note = f"{library} skipped: it does not import here ({reason})"
            if note not in notes:
                notes.append(note)
            continue
        try:
            if peer == "hf":
                from ..weights.hf import transformers_config

                transformers_config(config)
            else:
                from ..weights.timm import timm_kwargs_from

                timm_kwargs_from(config)
            keys.append(f"peer:{peer}")
        except ValueError as err:
            notes.append(f"{library} skipped for {name}: {err}")
    return keys


def make_plan(models: str | list[str], specs: str | list[str] = "none", *, checkpoint: str | None = None,
              data: str | None = None, peers: str | list[str] | None = None, batch_sizes: str | list[int] | None = None,
              quick: bool = False, threads: int | None = None, device: str = "cpu", repeats: int | None = None,
              eval_limit: int | None = None, timeout_s: float | None = None,
              memory_limit_mb: int | None = None) -> BenchPlan:
    """Every problem with the request at once, as one ValueError; else the plan."""
    import torch

    errors, entries, notes = [], [], []
    peer_list = [p.lower() for p in _split(peers)]
    for p in peer_list:
        if p not in PEERS:
            errors.append(f"unknown peer {p!r}; valid peers: {', '.join(PEERS)}")
    for text in _split(models) + _split(checkpoint):
        try:
            entries.append(_resolve_model(text, [p for p in PEERS if p in peer_list], notes))
        except (ValueError, FileNotFoundError) as err:
            errors.append(str(err))
    if not entries and not errors:
        errors.append("no models given: --models NAME,... (see `vitkit list`) and/or --checkpoint DIR")
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        errors.append(f"a model is listed twice: {names}")

    variants = []
    for text in _split(specs) or ["none"]:
        try:
            variant = canonical_variant(text)
        except ValueError as err:
            errors.append(f"spec {text!r}: {err}")
            continue
        if variant not in variants:
            variants.append(variant)
    if "none" in variants:  # every ratio is against fp32 eager, so it runs, and first
        variants.remove("none")
    variants.insert(0, "none")
    if device != "cpu" and not device.startswith("cuda"):
        errors.append(f"--device {device!r}: expected cpu, cuda or cuda:N")
    if device != "cpu" and any(uses_onnxruntime(v) for v in variants):
        errors.append(f"{'/'.join(RUNTIMES)} run in onnxruntime on the CPU; use --device cpu for them")
    if any(uses_onnxruntime(v) for v in variants):
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            errors.append(f"{'/'.join(RUNTIMES)} need onnxruntime: pip install 'vitkit[onnx]'")
    static = [v for v in variants if needs_calibration(v)]
    if static and not (data and any(e.is_checkpoint for e in entries)):
        errors.append(f"{static[0]} calibrates on training images: give a trained model with --checkpoint and its "
                      "dataset with --data (registry models are measured with random weights)")
    elif static and not all(e.is_checkpoint for e in entries):
        notes.append(f"{static[0]} runs on the trained models only: registry models have no training images")
    if device != "cpu" and memory_limit_mb:
        errors.append("--memory-limit-mb limits address space, which CUDA reserves in bulk: use it on the CPU only")
    if repeats is not None and repeats < 5:
        errors.append(f"--repeats must be at least 5 (a median of fewer is noise), got {repeats}")
    if eval_limit is not None and eval_limit < 1:
        errors.append(f"--eval-limit must be a positive number of images, got {eval_limit}")
    if threads is not None and threads < 1:
        errors.append(f"--threads must be at least 1, got {threads}")

    sizes = _split(batch_sizes) if isinstance(batch_sizes, str) else list(batch_sizes or [])
    try:
        sizes = sorted({int(b) for b in sizes}) or ([1, 8] if quick else [1, 32])
        if sizes[0] < 1:
            raise ValueError
    except ValueError:
        errors.append(f"--batch-sizes must be positive integers like 1,32; got {batch_sizes!r}")
        sizes = [1]

    if data is not None:
        errors += _check_data(data, entries)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        errors.append("vitkit bench draws its plots with matplotlib, which is not installed: "
                      "pip install 'vitkit[bench]'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        errors.append(f"--device {device}: this torch build sees no CUDA device")
    if errors:
        raise ValueError("vitkit bench cannot run:\n  - " + "\n  - ".join(errors))

    plan = BenchPlan(
        models=entries, variants=variants, peers=[p for p in PEERS if p in peer_list], batch_sizes=sizes,
        data=data, quick=quick, threads=threads or torch.get_num_threads(), device=device,
        repeats=repeats or (5 if quick else 10), warmup=1 if quick else 3, latency_runs=10 if quick else 50,
        min_run_s=0.05 if quick else 0.2, eval_limit=eval_limit or (1000 if quick else None),
        timeout_s=timeout_s, memory_limit_mb=memory_limit_mb, notes=notes,
    )
    return plan


def _check_data(data: str, entries: list[ModelEntry]) -> list[str]:
    from ..data import build_dataset

    trained = [e for e in entries if e.is_checkpoint]
    if not trained:
        return [f"--data {data} measures the accuracy of trained models; give them with --checkpoint DIR "
                "(registry models have random weights)"]
    try:
        info = build_dataset(data, "test").info
    except (ValueError, FileNotFoundError) as err:
        return [f"--data {data}: {err}"]
    errors = []
    for e in trained:
        if e.num_classes != info.num_classes or e.in_chans != info.in_chans:
            errors.append(f"{e.name} predicts {e.num_classes} classes from {e.in_chans}-channel images, but {data} "
                          f"has {info.num_classes} classes of {info.in_chans}-channel images")
    return errors
