"""One inf or NaN image must not change the other images' predictions (int8 measures ranges per batch)."""

import pytest
import torch

import vitkit
from vitkit.efficiency import reduces_tokens
from vitkit.efficiency.finite_rows import FiniteRows

BAD = (2, 5)  # rows set to inf and to NaN


def batch_with_bad_rows() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(8, 1, 28, 28)
    x[BAD[0]] = float("inf")
    x[BAD[1], 0, 3, 4] = float("nan")  # one bad pixel is enough
    good = torch.ones(8, dtype=torch.bool)
    good[list(BAD)] = False
    return x, good


def check_bad_rows_isolated(model) -> None:
    x, good = batch_with_bad_rows()
    with torch.no_grad():
        out, alone = model(x), model(x[good])
    assert out.shape == (8, 10)
    assert torch.equal(out[good], alone)
    assert out[~good].isnan().all()
    with torch.no_grad():
        all_bad = model(torch.full((3, 1, 28, 28), float("nan")))
    assert all_bad.shape == (3, 10) and all_bad.isnan().all()


@pytest.fixture(scope="module")
def pico():
    torch.manual_seed(0)
    return vitkit.create_model("vit_pico_patch4_28").eval()


def test_torch_int8_isolates_non_finite_rows(pico):
    q = vitkit.optimize(pico, "int8")
    x, good = batch_with_bad_rows()
    with torch.no_grad():
        unguarded = q.inner(x)  # what dynamic int8 does without the check
    assert not torch.equal(unguarded[good], q(x[good]))
    check_bad_rows_isolated(q)


def test_all_finite_batch_runs_the_model_as_is(pico):
    q = vitkit.optimize(pico, "tome:r=2,int8")
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(q(x), q.inner(x))


def test_int8_model_is_a_transparent_wrapper(pico, tmp_path):
    q = vitkit.optimize(pico, "int8")
    assert isinstance(q, FiniteRows) and q.config is q.inner.config and q.blocks is q.inner.blocks
    assert not q.training and not q.inner.training
    q.metadata = {"optimize": "int8"}
    assert q.inner.metadata == {"optimize": "int8"}
    # optimizing further works on the model inside and wraps it again
    again = vitkit.optimize(q, "tome:r=2")
    assert isinstance(again, FiniteRows) and not isinstance(again.inner, FiniteRows)
    assert again.blocks[0].token_reducer.r == 2 and not reduces_tokens(q)
    # a directory written by `vitkit optimize` reloads with the spec applied, wrapped, metadata readable
    vitkit.save(pico, tmp_path / "m", metadata={"optimize": "int8"})
    loaded = vitkit.load(tmp_path / "m")
    assert isinstance(loaded, FiniteRows) and loaded.metadata["optimize"] == "int8"
    assert loaded.config.num_classes == 10 and hasattr(loaded, "model_name")
    check_bad_rows_isolated(loaded)


def test_other_specs_are_not_wrapped_and_float_isolates_rows_by_itself(pico):
    assert not isinstance(vitkit.optimize(pico, "tome:r=2"), FiniteRows)
    x, good = batch_with_bad_rows()
    with torch.no_grad():
        out, alone = pico(x), pico(x[good])
    assert out[~good].isnan().all()
    torch.testing.assert_close(out[good], alone, atol=1e-6, rtol=1e-6)


def test_onnx_int8_isolates_non_finite_rows(pico, tmp_path):
    pytest.importorskip("onnxruntime")
    from vitkit.efficiency.onnx_export import OnnxModel, export_onnx, quantize_onnx_int8

    path = quantize_onnx_int8(export_onnx(pico, tmp_path / "fp32.onnx"), tmp_path / "int8.onnx")
    session = OnnxModel(path, pico.config)
    x, good = batch_with_bad_rows()
    assert not torch.equal(session._run(x)[good], session(x[good]))  # without the check
    check_bad_rows_isolated(session)


def test_onnx_export_of_a_wrapped_model_exports_the_network_inside(pico, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from vitkit.efficiency.onnx_export import OnnxModel, export_onnx

    path = export_onnx(FiniteRows(pico), tmp_path / "wrapped.onnx")
    assert not {n.op_type for n in onnx.load(str(path)).graph.node} & {"IsInf", "IsNaN"}
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert (OnnxModel(path)(x) - pico(x)).abs().max() <= 1e-4
