import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import vitkit
from vitkit.weights import read_checkpoint

VIT_FIXTURES = ["vit_p4_32", "vit_p7_28_gray", "deit_distilled_p4_32", "vit_reg4_avg_p4_32"]


def read_fixture(fixtures_dir, name):
    meta = json.loads((fixtures_dir / "timm" / f"{name}.json").read_text())
    tensors = load_file(fixtures_dir / "timm" / f"{name}.safetensors")
    reference = {k: tensors.pop(k) for k in list(tensors) if k.startswith("__")}
    return meta, tensors, reference


@pytest.mark.parametrize("name", VIT_FIXTURES)
def test_from_timm_reproduces_timm_outputs(fixtures_dir, name):
    meta, state_dict, ref = read_fixture(fixtures_dir, name)
    model = vitkit.from_timm(meta["timm_class"], meta["kwargs"], state_dict).eval()
    with torch.no_grad():
        features = model.forward_features(ref["__input__"])
        logits = model.forward_head(features)
    assert features.shape == ref["__features__"].shape
    torch.testing.assert_close(features, ref["__features__"], atol=1e-4, rtol=0)
    torch.testing.assert_close(logits, ref["__logits__"], atol=1e-4, rtol=0)
    # a model that ignored any tensor (e.g. position embedding) would be far off
    fresh = vitkit.from_timm(meta["timm_class"], meta["kwargs"]).eval()
    assert (fresh(ref["__input__"]) - ref["__logits__"]).abs().max() > 1e-2


@pytest.mark.parametrize("name", VIT_FIXTURES)
def test_timm_arguments_round_trip_for_the_bench_peer(fixtures_dir, name):
    """`vitkit bench --peers timm` builds timm's model from `timm_kwargs_from`; it must describe the same
    model timm built the fixture with (timm itself does not import here)."""
    from vitkit.weights.timm import config_from_timm, timm_kwargs_from

    meta, _, _ = read_fixture(fixtures_dir, name)
    config = config_from_timm(meta["timm_class"], meta["kwargs"])
    timm_class, kwargs = timm_kwargs_from(config)
    assert timm_class == meta["timm_class"]
    assert config_from_timm(timm_class, kwargs) == config
    with pytest.raises(ValueError, match="conv stem"):
        timm_kwargs_from(vitkit.create_model("vit_pico_convstem_28").config)


def test_create_model_loads_timm_file_and_resamples(fixtures_dir, tmp_path):
    _, state_dict, ref = read_fixture(fixtures_dir, "vit_p4_32")
    path = tmp_path / "timm.safetensors"
    save_file(state_dict, path)
    kw = dict(embed_dim=64, depth=2, num_heads=2)
    model = vitkit.create_model("vit_pico_patch4_32", **kw, checkpoint=str(path)).eval()
    torch.testing.assert_close(model(ref["__input__"]), ref["__logits__"], atol=1e-4, rtol=0)
    # at another image size the position embedding is resampled at load time
    bigger = vitkit.create_model("vit_pico_patch4_32", **kw, img_size=48, checkpoint=str(path))
    assert bigger.pos_embed.shape == (1, 1 + 144, 64)
    torch.testing.assert_close(bigger.pos_embed[:, :1], state_dict["pos_embed"][:, :1])
    # and to one input channel by summing the RGB filters
    gray = vitkit.create_model("vit_pico_patch4_32", **kw, in_chans=1, checkpoint=str(path))
    torch.testing.assert_close(gray.patch_embed.proj.weight, state_dict["patch_embed.proj.weight"].sum(1, keepdim=True))


def test_pth_with_nested_and_prefixed_keys(fixtures_dir, tmp_path):
    _, state_dict, ref = read_fixture(fixtures_dir, "deit_distilled_p4_32")
    path = tmp_path / "ckpt.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state_dict.items()}, "epoch": 3}, path)
    model = vitkit.create_model("deit_pico_distilled_patch4_32", embed_dim=64, depth=2, checkpoint=str(path)).eval()
    torch.testing.assert_close(model(ref["__input__"]), ref["__logits__"], atol=1e-4, rtol=0)


def test_mismatched_checkpoint_lists_every_problem(fixtures_dir, tmp_path):
    _, state_dict, _ = read_fixture(fixtures_dir, "vit_p4_32")
    state_dict = dict(state_dict)
    del state_dict["norm.weight"]
    state_dict["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    save_file(state_dict, path)
    with pytest.raises(vitkit.CheckpointMismatchError) as info:
        vitkit.create_model("vit_pico_patch4_32", embed_dim=64, depth=2, num_classes=5, checkpoint=str(path))
    message = str(info.value)
    assert "missing (1): norm.weight" in message
    assert "unexpected (1): extra.weight" in message
    assert "head.weight (checkpoint (10, 64), model (5, 64))" in message
    # strict=False loads what fits and keeps the rest
    with pytest.warns(UserWarning, match="left 3 model tensors as initialised"):
        model = vitkit.create_model("vit_pico_patch4_32", embed_dim=64, depth=2, num_classes=5,
                                    checkpoint=str(path), strict=False)
    torch.testing.assert_close(model.blocks[1].mlp.fc2.weight, state_dict["blocks.1.mlp.fc2.weight"])


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_weights_file_is_a_clear_error(fixtures_dir, tmp_path, suffix):
    _, state_dict, _ = read_fixture(fixtures_dir, "vit_p4_32")
    good = tmp_path / f"good{suffix}"
    save_file(state_dict, good) if suffix == ".safetensors" else torch.save(state_dict, good)
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    unreadable = r"bad\.(safetensors|pth) is not a readable .*truncated or corrupt"
    with pytest.raises(vitkit.CorruptCheckpointError, match=unreadable):
        vitkit.create_model("vit_pico_patch4_32", checkpoint=str(bad))
    with pytest.raises(ValueError, match=r"unknown weights format '\.txt'"):
        (tmp_path / "w.txt").write_text("x")
        read_checkpoint(tmp_path / "w.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_checkpoint(tmp_path / "nothing.pth")


def test_save_and_load_round_trip(tmp_path):
    model = vitkit.create_model("vit_pico_patch4_32", reg_tokens=1, init_values=0.5).eval()
    vitkit.save(model, tmp_path / "m", metadata={"class_names": list("abcdefghij")})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = vitkit.load(tmp_path / "m").eval()
    assert loaded.config == model.config
    assert loaded.metadata["class_names"][0] == "a"
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    assert vitkit.load(tmp_path / "m", img_size=64).pos_embed.shape == (1, 2 + 256, 64)
    # a vitkit directory also works as create_model's checkpoint
    again = vitkit.create_model("vit_pico_patch4_32", reg_tokens=1, init_values=0.5, checkpoint=str(tmp_path / "m"))
    assert torch.equal(again.eval()(x), model(x))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        vitkit.load(tmp_path)


def test_a_hugging_face_model_type_no_family_handles_names_the_handled_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    save_file({"embeddings.word_embeddings.weight": torch.zeros(4, 8)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"config.json: Hugging Face model_type 'bert' is not one vitkit converts; "
                                         r"handled: .*deit.*vit"):
        vitkit.load(tmp_path)
