"""`vitkit trust` end to end on the shared trained digits model: every section of the report, predictions
reused by a second run, the report in a real browser, and the bad inputs the issue names."""

import json
import math

import pytest
import torch

from browser import render
from vitkit.cli import main
from vitkit.data import build_dataset
from vitkit.trust import TrustOptions, run_trust, write_report

SMALL = dict(corruptions=["gaussian_noise", "inverse"], severities=(1, 5), sweep_images=120, explain_images=6,
             progress=False)


@pytest.fixture(scope="module")
def report(trained_digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("trust") / "report"
    results, figures = run_trust(str(trained_digits), out, TrustOptions(**SMALL), log=lambda m: None)
    write_report(results, figures, out)
    return out, results


def test_calibration_is_fitted_on_validation_and_reported_before_and_after(report):
    _, results = report
    cal = results["calibration"]
    assert results["val_images"] == len(build_dataset("digits", "val"))
    assert results["test_images"] == len(build_dataset("digits", "test"))
    assert cal["temperature"] > 0
    for key in ("before", "after"):
        assert 0 <= cal[key]["ece"] <= 1 and cal[key]["nll"] > 0
    # temperature scaling keeps the argmax, so accuracy does not move
    assert cal["before"]["accuracy"] == cal["after"]["accuracy"] == pytest.approx(results["test_top1"])


def test_conformal_rows_cover_every_score_and_alpha(report):
    _, results = report
    scores = results["conformal"]["scores"]
    assert set(scores) == {"lac", "aps", "raps"}
    for rows in scores.values():
        assert [r["alpha"] for r in rows] == [0.2, 0.1, 0.05, 0.01]
        sizes = [r["mean_set_size"] for r in rows]
        assert sizes == sorted(sizes)  # a smaller alpha never gives smaller sets
        assert all(1 - r["alpha"] - 0.1 <= r["coverage"] <= 1 for r in rows)


def test_corruption_sweep_rows_ce_and_baseline(report):
    _, results = report
    sweep = results["corruptions"]
    assert sweep["images"] == 120 and len(sweep["rows"]) == 4
    assert {(r["corruption"], r["severity"]) for r in sweep["rows"]} == {
        ("gaussian_noise", 1), ("gaussian_noise", 5), ("inverse", 1), ("inverse", 5)}
    noise = {r["severity"]: r["top1"] for r in sweep["rows"] if r["corruption"] == "gaussian_noise"}
    assert noise[5] < noise[1] <= sweep["clean"]["top1"] + 0.05
    assert "raw pixels" in sweep["baseline"] and math.isfinite(sweep["mce"]) and sweep["mce"] > 0
    errors = {name: sum(1 - r["top1"] for r in sweep["rows"] if r["corruption"] == name) for name in sweep["ce"]}
    base = {name: sum(1 - r["baseline_top1"] for r in sweep["rows"] if r["corruption"] == name) for name in sweep["ce"]}
    assert sweep["ce"]["inverse"] == pytest.approx(errors["inverse"] / base["inverse"])


def test_ood_detects_noise_with_every_score(report):
    _, results = report
    section = results["ood"]
    assert "noise" in section["sets"] and "heldout" not in section["sets"]  # the model saw every class
    assert set(section["metrics"]) == {"msp", "max_logit", "energy", "mahalanobis", "knn"}
    for per_set in section["metrics"].values():
        assert 0 <= per_set["noise"]["auroc"] <= 1 and 0 <= per_set["noise"]["fpr95"] <= 1
    assert section["metrics"]["mahalanobis"]["noise"]["auroc"] > 0.9


def test_explanations_and_faithfulness_for_every_supported_method(report):
    _, results = report
    section = results["explanations"]
    assert section["images"] == 6
    assert {"gradcam", "occlusion", "chefer", "rollout"} <= set(section["methods"])
    for method in section["methods"]:
        m = section["faithfulness"]["methods"][method]
        assert 0 <= m["deletion_auc"] <= 1 and 0 <= m["insertion_auc"] <= 1 and isinstance(m["beats_random"], bool)


def test_report_files_and_predictions_reused(report, trained_digits):
    out, results = report
    saved = json.loads((out / "results.json").read_text())
    assert saved["test_top1"] == pytest.approx(results["test_top1"])
    for figure in ("reliability", "conformal", "corruptions", "ood_roc", "explanations"):
        assert (out / f"{figure}.png").stat().st_size > 1000
    assert any((out / "predictions").iterdir())
    again, _ = run_trust(str(trained_digits), out, TrustOptions(**SMALL), log=lambda m: None)
    assert again["forward_passes"] == []  # every set read back from out/predictions
    for name, per_set in results["ood"]["metrics"].items():
        for spec, metrics in per_set.items():
            assert again["ood"]["metrics"][name][spec] == pytest.approx(metrics)


def test_report_renders_in_a_real_browser(report):
    out, _ = report
    dom, console = render(out / "report.html")
    assert 'data-plots-loaded="5"' in dom and 'data-plots-failed="0"' in dom
    assert "Conformal prediction" in dom and "gaussian_noise" in dom
    assert console == []
    assert "http://" not in (out / "report.html").read_text()


def test_heldout_classes_are_near_ood(tmp_path):
    """A model trained on digits 0-7 (a few epochs) has 8 outputs; the test images of 8 and 9 are its near-OOD
    set, found from the checkpoint's metadata."""
    from vitkit.training import TrainConfig, load_recipe, train

    recipe = {**load_recipe("digits"), "output": str(tmp_path / "run"), "epochs": 6, "eval_every": 6,
              "progress": False, "classes": "0-7"}
    train(TrainConfig.from_dict(recipe))
    model_dir = tmp_path / "run" / "best"
    assert json.loads((model_dir / "config.json").read_text())["metadata"]["classes"] == list(range(8))
    results, _ = run_trust(str(model_dir), tmp_path / "trust", TrustOptions(
        corruptions=[], ood=["heldout"], explain_methods=[], progress=False), log=lambda m: None)
    heldout = build_dataset("digits", "test", classes=[8, 9])
    assert results["ood"]["sets"] == {"heldout": len(heldout)}
    assert results["ood"]["metrics"]["msp"]["heldout"]["auroc"] > 0.5
    assert results["test_images"] == len(build_dataset("digits", "test", classes="0-7"))


@pytest.mark.parametrize("argv, message", [
    (["--alphas", "1.5"], "alpha"),
    (["--alphas", "0.001"], "calibration set of 144 images is smaller"),
    (["--corruptions", "smudge"], "unknown corruption"),
    (["--severities", "6"], "1-5"),
    (["--explain", "lime"], "lime"),
    (["--ood", "heldout"], "held-out classes"),
    (["--data", "synthetic:300"], "expected"),
])
def test_bad_input_is_one_line_naming_what_was_expected(trained_digits, tmp_path, capsys, argv, message):
    code = main(["trust", str(trained_digits), "--out", str(tmp_path / "r"), "--quiet", "--corruptions", "none",
                 "--explain", "none", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "report.html").exists()


def test_an_unrelated_directory_is_never_replaced(trained_digits, tmp_path, capsys):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    assert main(["trust", str(trained_digits), "--out", str(keep), "--quiet"]) == 2
    assert "not an earlier vitkit trust report" in capsys.readouterr().err
    assert (keep / "notes.txt").read_text() == "precious"


def test_temperature_on_test_is_refused():
    from vitkit.evaluation.calibration import fit_temperature

    with pytest.raises(ValueError, match="validation"):
        fit_temperature(torch.randn(10, 3), torch.randint(0, 3, (10,)), split="test")
