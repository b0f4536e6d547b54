"""`vitkit zoo`: every entry builds at its size with ~1M parameters; a tiny run writes the whole report; bad
input (an unknown entry, a budget below one epoch) is refused before anything is trained."""

import csv
import json

import pytest

import vitkit
from vitkit.evaluation import count_params
from vitkit.zoo import merge_zoo, run_zoo, zoo_names, zoo_recipe
from vitkit.zoo.report import COLUMNS, markdown_table
from vitkit.zoo.run import Estimate, fit_warmup, plan_epochs

PARAM_RANGE = (0.5e6, 2e6)
TINY_RUN = {"max_steps": 2, "batch_size": 32, "eval_every": 1}
TINY_TIMING = {"warmup": 1, "repeats": 1, "min_run_s": 0.0, "latency_runs": 2}


@pytest.mark.parametrize("name", zoo_names())
def test_every_entry_builds_at_its_input_size_with_about_1m_parameters(name):
    recipe = zoo_recipe(name)
    model = vitkit.create_model(recipe["model"], num_classes=10, in_chans=1, img_size=recipe.get("img_size"),
                                **recipe.get("model_kwargs", {}))
    assert model.input_spec.img_size[0] in (28, 32)
    assert PARAM_RANGE[0] <= count_params(model) <= PARAM_RANGE[1], f"{name}: {count_params(model):,} parameters"


def test_the_reference_is_the_fashion_mnist_recipe():
    recipe = zoo_recipe("vit")
    assert recipe["model"] == "vit_nano_convstem_28" and recipe["data"] == "fashion-mnist"


def test_a_tiny_zoo_writes_every_result_file(tmp_path):
    out = tmp_path / "zoo"
    results = run_zoo(["caformer", "efficientformer"], data="digits", budget_min=60, out=out, threads=1,
                      overrides=TINY_RUN, estimate_steps=2, timing=TINY_TIMING, progress=False)
    assert [r["model"] for r in results["rows"]] == ["caformer", "efficientformer"]
    for name in ("results.json", "results.csv", "pareto.png", "report.html"):
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "results.json").read_text())
    for row in saved["rows"]:
        assert all(row.get(c) is not None for c in COLUMNS if c != "top1_std"), row
        assert 0 <= row["top1"] <= 1 and 0 <= row["ece"] <= 1 and row["epochs"] >= 1 and 0 <= row["val_top1"] <= 1
        run_config = json.loads((out / "runs" / f"{row['model']}-s0" / "config.json").read_text())
        assert run_config["epochs"] == row["epochs"] and run_config["time_limit_min"] == 60  # the budget
        assert run_config["warmup_epochs"] == fit_warmup(zoo_recipe(row["model"])["warmup_epochs"], row["epochs"])
        assert (out / "runs" / f"{row['model']}-s0" / "best" / "config.json").is_file()
    with open(out / "results.csv") as f:
        assert list(csv.DictReader(f))[0].keys() == set(COLUMNS)
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "caformer" in page and any(r["pareto"] for r in saved["rows"])


def test_warmup_is_capped_at_a_tenth_of_the_planned_epochs():
    assert fit_warmup(1.0, 47) == 1.0  # the recipe's 1 epoch: under a tenth of 47
    assert fit_warmup(1.0, 3) == pytest.approx(0.3)  # 3 epochs: 0.3 epochs of warm-up, not all of the first
    assert fit_warmup(0.0, 5) == 0.0


def test_epochs_are_planned_with_a_margin_and_a_run_cut_short_says_so():
    estimate = Estimate(step_s=1.0, steps_per_epoch=50, val_s=20.0, eval_every=2)  # 60 s per epoch
    assert plan_epochs("vit", estimate, budget_min=30) == 28  # 95% of 30 epochs' time
    row = {"model": "vit", "epochs": 28, "epochs_done": 26, "stopped_by_time_limit": True}
    assert "| 26 of 28 |" in markdown_table({"rows": [row]})
    assert "| 28 |" in markdown_table({"rows": [{**row, "stopped_by_time_limit": False}]})


def test_an_unknown_entry_is_one_error_listing_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown zoo model\(s\) resnet9000; expected one of: .*caformer"):
        run_zoo(["caformer", "resnet9000"], data="digits", out=tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()


def test_a_budget_below_one_epoch_is_refused_before_training(tmp_path):
    out = tmp_path / "zoo"
    with pytest.raises(ValueError, match=r"--budget-min 1e-05 is too small for caformer: one epoch takes .*"
                                         r"expected at least"):
        run_zoo(["caformer"], data="digits", budget_min=1e-5, out=out, overrides=TINY_RUN, estimate_steps=1,
                progress=False)
    assert not out.exists()


def test_zoo_runs_side_by_side_merge_into_one_table(tmp_path):
    parts = []
    for name in ("caformer", "efficientformer"):
        parts.append(tmp_path / name)
        run_zoo([name], data="digits", budget_min=60, out=parts[-1], threads=1, overrides=TINY_RUN, estimate_steps=2,
                timing=TINY_TIMING, progress=False)
    for part in parts:  # a report made before val_top1 was a column: the merge reads it from the runs
        old = json.loads((part / "results.json").read_text())
        want = old["rows"][0].pop("val_top1")
        (part / "results.json").write_text(json.dumps(old))
    merged = merge_zoo(parts, tmp_path / "all", threads=1, timing=TINY_TIMING, progress=False)
    assert merged["rows"][-1]["val_top1"] == want
    assert [r["model"] for r in merged["rows"]] == ["caformer", "efficientformer"] and merged["remeasured"]
    assert all(r["infer_img_s_b256"] > 0 for r in merged["rows"])
    assert json.loads((tmp_path / "all" / "results.json").read_text())["rows"][1]["model"] == "efficientformer"
    assert (tmp_path / "all" / "report.html").stat().st_size > 0
    with pytest.raises(ValueError, match="an entry appears in more than one of the zoo runs: caformer$"):
        merge_zoo([parts[0], parts[0]], tmp_path / "twice", remeasure=False, progress=False)
    with pytest.raises(ValueError, match=r"is not a zoo report directory: expected .*results\.json"):
        merge_zoo([parts[0], tmp_path / "nothing"], tmp_path / "bad", remeasure=False, progress=False)
    other = json.loads((parts[1] / "results.json").read_text())
    other["budget_min"] = 30
    (parts[1] / "results.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match=r"the zoo runs differ in budget_min \(30, 60\)"):
        merge_zoo(parts, tmp_path / "mixed", remeasure=False, progress=False)
    assert not (tmp_path / "twice").exists() and not (tmp_path / "mixed").exists()
