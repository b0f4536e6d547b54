import warnings

import pytest
import torch

import vitkit
from vitkit.efficiency import parse_spec, reduces_tokens, spec_to_string
from vitkit.efficiency.precision import cpu_has_native_bf16


def test_spec_parsing_round_trip():
    items = parse_spec("tome:r=[4,4,2]:schedule=constant, evit:keep=0.7:blocks=[1,2],int8:skip=[0],compile")
    assert [i.name for i in items] == ["tome", "evit", "int8", "compile"]
    assert items[0].params["r"] == [4, 4, 2] and items[1].params["blocks"] == [1, 2]
    assert spec_to_string(items) == "tome:r=[4,4,2],evit:keep=0.7:blocks=[1,2],int8:skip=[0],compile"
    assert parse_spec("none") == [] and parse_spec(None) == [] and parse_spec("") == []


@pytest.mark.parametrize("spec, message", [
    ("turbo", r"(?s)unknown spec item 'turbo'.*tome.*evit.*bf16.*int8.*compile"),
    ("tome:x=3", "valid parameters: r, schedule, prop_attn, trace_source"),
    ("tome", "needs r="),
    ("tome:r=abc", "bad value for tome:r"),
    ("bf16,int8", "do not combine"),
    ("tome:r=2,tome:r=3", "appears twice"),
    ("tome:prop_attn=maybe:r=2", "true or false"),
    ("evit:keep=1.5", r"\(0, 1\]"),
    ("tome:r=4:schedule=sideways", "constant or decreasing"),
    ("tome:r=-1", ">= 0"),
    ("compile:mode=fastest", "compile:mode must be one of"),
])
def test_bad_specs_are_reported_with_the_valid_choices(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_spec(spec)


def test_spec_items_given_as_a_list_get_defaults_and_checks():
    from vitkit.efficiency import SpecItem

    items = parse_spec([SpecItem("tome", {"r": 8})])
    assert items[0].params["schedule"] == "constant"
    with pytest.raises(ValueError, match="valid parameters"):
        parse_spec([SpecItem("tome", {"r": 8, "speed": 2})])


def test_token_reduction_refused_on_models_without_a_token_sequence():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten())
    with pytest.raises(ValueError, match="one token sequence; Sequential is not one: no token adapter is registered"):
        vitkit.optimize(conv, "tome:r=2")


def test_int8_quantizes_blocks_keeps_head_and_skipped_blocks_float():
    model = vitkit.create_model("vit_pico_patch4_28").eval()
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    q = vitkit.optimize(model, "int8:skip=[3]")
    assert isinstance(q.blocks[0].attn.qkv, DynamicQuantizedLinear)
    assert isinstance(q.blocks[0].mlp.fc2, DynamicQuantizedLinear)
    assert not isinstance(q.blocks[3].attn.qkv, DynamicQuantizedLinear)
    assert not isinstance(q.head, DynamicQuantizedLinear)
    assert isinstance(model.blocks[0].attn.qkv, torch.nn.Linear)  # original untouched
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert 0 < (ref - out).abs().max() < 0.1 * ref.abs().max()


def test_int8_refuses_models_it_cannot_run():
    bf16 = vitkit.create_model("vit_pico_patch4_28").to(torch.bfloat16)
    with pytest.raises(RuntimeError, match="float32"):
        vitkit.optimize(bf16, "int8")


def test_int8_without_a_quantized_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(type(torch.backends.quantized), "supported_engines", property(lambda self: ["none"]))
    model = vitkit.create_model("vit_pico_patch4_28").eval()
    with pytest.raises(RuntimeError, match=r"int8 needs a quantized backend .*this torch has \['none'\]"):
        vitkit.optimize(model, "int8")


def test_bf16_takes_float_input_and_warns_without_native_support():
    model = vitkit.create_model("vit_pico_patch4_28").eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast = vitkit.optimize(model, "bf16")
    assert any("no native bf16" in str(w.message) for w in caught) == (not cpu_has_native_bf16())
    assert fast.head.weight.dtype == torch.bfloat16 and model.head.weight.dtype == torch.float32
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fast(x).float(), model(x), atol=0.05, rtol=0.05)


def test_compile_falls_back_to_eager_with_a_clear_message(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    model = vitkit.create_model("vit_pico_patch2_8").eval()
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler found.*eager model"):
        fast = vitkit.optimize(model, "compile")
    assert type(fast) is type(model)


def test_compile_really_compiles(onednn_for_every_size):
    model = vitkit.create_model("vit_pico_patch2_8").eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast = vitkit.optimize(model, "compile")
    assert not [w for w in caught if "torch.compile failed" in str(w.message)]
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), atol=1e-4, rtol=1e-4)
    assert type(fast).__name__ == "OptimizedModule"


def test_saved_optimized_model_reloads_with_its_spec(tmp_path):
    model = vitkit.create_model("vit_pico_patch4_28").eval()
    vitkit.save(model, tmp_path / "m", metadata={"optimize": "tome:r=4"})
    loaded = vitkit.load(tmp_path / "m")
    assert loaded.blocks[0].token_reducer.r == 4
    plain = vitkit.load(tmp_path / "m", optimized=False)
    assert not reduces_tokens(plain) and not hasattr(plain.blocks[0], "token_reducer")
