"""Token reduction reaches models through one adapter per family, not through hooks in shared layers."""

import copy
import pickle

import pytest
import torch
from torch import nn

import vitkit
from vitkit.efficiency import apply_evit, apply_tome, reduces_tokens
from vitkit.efficiency.adapters import (
    NoTokenAdapterError,
    TokenAdapter,
    find_token_adapter,
    register_token_adapter,
    token_adapter,
)
from vitkit.efficiency.adapters.vit import ReducingBlock, ViTAdapter
from vitkit.layers.block import Block
from vitkit.models import VisionTransformer

PICO = {"vit_pico_patch4_32": (3, 32), "vit_pico_patch4_28": (1, 28)}


def pico(name="vit_pico_patch4_32", **kwargs):
    torch.manual_seed(0)
    return vitkit.create_model(name, **kwargs).eval()


def images(batch, name="vit_pico_patch4_32"):
    chans, size = PICO[name]
    return torch.randn(batch, chans, size, size)


def test_shared_block_has_no_reduction_hook_and_is_never_patched():
    block = Block(16, 2)
    assert not hasattr(block, "token_reducer")
    assert not any("reduc" in name or "token" in name for name in vars(block))
    before = dict(vars(Block))
    model = pico()
    fast = vitkit.optimize(model, "evit:keep=0.5:blocks=[1],tome:r=4")
    with torch.no_grad():
        fast(images(2))
    assert dict(vars(Block)) == before  # the shared class is not monkeypatched
    assert all(type(b) is Block for b in model.blocks)  # the original model's blocks are untouched
    assert all(type(b) is ReducingBlock for b in fast.blocks)  # the copy's blocks are swapped, per instance


@pytest.mark.parametrize("spec", ["tome:r=8", "evit:keep=0.5", "evit:keep=0.7:blocks=[1],tome:r=[0,4,4]"])
def test_state_dict_keys_and_values_unchanged(spec):
    model = pico(reg_tokens=2, distilled=True)
    fast = vitkit.optimize(model, spec)
    plain, reduced = model.state_dict(), fast.state_dict()
    assert list(reduced) == list(plain)
    assert all(torch.equal(reduced[k], plain[k]) for k in plain)
    # checkpoints move both ways with strict loading
    fast.load_state_dict(plain, strict=True)
    pico(reg_tokens=2, distilled=True).load_state_dict(reduced, strict=True)


class ToyTokenModel(nn.Module):
    """Has what the old `is_plain_vit` check looked for, but no adapter: refused, by name."""

    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 8, 4, 4)
        self.blocks = nn.Sequential(Block(8, 2))
        self.num_prefix_tokens = 0


@pytest.mark.parametrize("make, name, why", [
    (lambda: vitkit.create_model("convnext_tiny", num_classes=4, depths=(1, 1, 2, 1), dims=(8, 16, 24, 32)),
     "ConvNeXt", r"it has stages of feature maps \(strides 4, 8, 16, 32\), not one token sequence"),
    (ToyTokenModel, "ToyTokenModel",
     r"no token adapter is registered for it \(vitkit\.efficiency\.adapters\.register_token_adapter\)"),
])
def test_model_without_adapter_gets_one_clear_error(make, name, why):
    model = make()
    expected = (rf"needs a model whose blocks all see one token sequence; {name} is not one: {why}; "
                r"token-sequence models: ViT, DeiT, DINOv2, CLIP, SigLIP, BEiT, CCT")
    for call, what in [(lambda: apply_tome(model, 2), "ToMe"), (lambda: apply_evit(model, 0.5), "EViT"),
                       (lambda: vitkit.optimize(model, "tome:r=2"), "tome"),
                       (lambda: vitkit.optimize(model, "evit:keep=0.5"), "evit")]:
        with pytest.raises(NoTokenAdapterError, match=rf"^{what} {expected}$") as err:
            call()
        assert "\n" not in str(err.value)
        assert isinstance(err.value, ValueError) and isinstance(err.value, TypeError)
    assert find_token_adapter(model) is None and not reduces_tokens(model)
    assert all(type(b) is Block for b in model.modules() if isinstance(b, Block))  # nothing half-installed


def test_adapters_are_found_by_class_and_registered_per_family(monkeypatch):
    from vitkit.efficiency import adapters

    assert isinstance(token_adapter(pico()), ViTAdapter)  # registered for VisionTransformer

    class MyViT(VisionTransformer):
        pass

    assert isinstance(token_adapter(MyViT(pico().config)), ViTAdapter)  # subclasses inherit it

    class MyAdapter(TokenAdapter):
        pass

    mine = MyAdapter()
    monkeypatch.setitem(adapters._ADAPTERS, ToyTokenModel, mine)
    assert token_adapter(ToyTokenModel()) is mine
    monkeypatch.delitem(adapters._ADAPTERS, ToyTokenModel)
    register_token_adapter(ToyTokenModel, mine)
    try:
        assert find_token_adapter(ToyTokenModel()) is mine
    finally:
        del adapters._ADAPTERS[ToyTokenModel]
    with pytest.raises(TypeError, match="needs a model class"):
        register_token_adapter(ToyTokenModel(), mine)


@pytest.mark.parametrize("name, kwargs", [
    ("vit_pico_patch4_32", {}),
    ("vit_pico_patch4_32", {"reg_tokens": 4, "distilled": True}),
    ("vit_pico_patch4_32", {"class_token": False, "global_pool": "avg"}),
    ("vit_pico_patch4_28", {}),
])
def test_tome_r0_gives_identical_outputs(name, kwargs):
    model = pico(name, **kwargs)
    original = copy.deepcopy(model)
    apply_tome(model, 0)  # in place
    assert all(type(b) is ReducingBlock for b in model.blocks) and reduces_tokens(model)
    x = images(3, name)
    with torch.no_grad():
        assert torch.equal(model(x), original(x))
        assert torch.equal(model.forward_features(x), original.forward_features(x))
        _, got = model.forward_intermediates(x)
        _, want = original.forward_intermediates(x)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
        spec = "evit:keep=1.0,tome:r=0" if original.cls_token is not None else "tome:r=0"  # EViT needs one
        assert torch.equal(vitkit.optimize(original, spec)(x), original(x))


def test_state_resets_every_pass_without_the_models_help(monkeypatch):
    """The adapter starts the token state afresh itself: hide the state from the model's own embed()
    (what a model that knows nothing of token reduction does) and run passes of changing batch sizes."""
    real_embed = VisionTransformer.embed

    def embed_that_never_resets(self, x):
        state, self.__dict__["token_state"] = self.__dict__.get("token_state"), None
        try:
            return real_embed(self, x)
        finally:
            self.__dict__["token_state"] = state

    monkeypatch.setattr(VisionTransformer, "embed", embed_that_never_resets)
    spec = "evit:keep=0.5:blocks=[1],tome:r=4:trace_source=true"
    fast = vitkit.optimize(pico(), spec)
    with torch.no_grad():
        for batch in (2, 3, 1, 3):
            x = images(batch)
            fresh = vitkit.optimize(pico(), spec)  # never ran: nothing stale
            assert torch.equal(fast.forward_features(x), fresh.forward_features(x))
            assert torch.equal(fast(x), fresh(x))
            _, got = fast.forward_intermediates(x, output_fmt="NLC")
            _, want = fresh.forward_intermediates(x, output_fmt="NLC")
            assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
            assert fast.token_state.size.shape[0] == batch


def test_copies_and_pickles_carry_their_own_state():
    fast = vitkit.optimize(pico(), "tome:r=8")
    x = images(2)
    for twin in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))):
        assert twin.token_state is not fast.token_state
        assert all(b.token_reducer.state is twin.token_state for b in twin.blocks)
        assert [b.token_reducer.r for b in twin.blocks] == [8, 8, 8, 8]
        with torch.no_grad():
            assert torch.equal(twin(x), fast(x))


def test_applying_twice_and_composing():
    model = pico()
    apply_evit(model, 0.5, [2])
    assert [type(b) for b in model.blocks] == [ReducingBlock, Block, ReducingBlock, Block]  # block 0 resets
    assert [None if r is None else r.keep for r in token_adapter(model).reducers(model)] == [None, None, 0.5, None]
    apply_tome(model, 2)
    assert all(type(b) is ReducingBlock for b in model.blocks)
    with pytest.raises(ValueError, match="already merges tokens"):
        apply_tome(model, 2)


def test_wrapped_int8_model_reduces_and_draws_merge_maps():
    from vitkit.efficiency.finite_rows import FiniteRows
    from vitkit.efficiency.merge_map import token_groups

    q = vitkit.optimize(pico("vit_pico_patch4_28"), "tome:r=8,int8")
    assert isinstance(q, FiniteRows) and reduces_tokens(q)
    assert token_groups(q, torch.rand(1, 28, 28)).shape == (7, 7)
