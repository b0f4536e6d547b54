"""ToMe / EViT on the token-sequence families beyond ViT: BEiT (relative position bias) and CCT (no class token,
sequence pooling), through their adapters."""

import pytest
import torch

import vitkit
from vitkit.efficiency import apply_tome
from vitkit.efficiency.adapters.beit import ReducingBeitBlock, reduce_position_bias
from vitkit.efficiency.adapters.cct import ProportionalPoolScore, ReducingCctBlock

BEIT = {"img_size": 32, "patch_size": 4, "embed_dim": 32, "depth": 3, "num_heads": 2, "use_abs_pos_emb": False,
        "use_rel_pos_bias": True, "init_values": 0.1, "num_classes": 5}
CCT = {"embed_dim": 32, "depth": 3, "num_heads": 2, "num_classes": 5}


def beit(**overrides):
    torch.manual_seed(0)
    model = vitkit.create_model("beit_base_patch16_224", **{**BEIT, **overrides}).eval()
    with torch.no_grad():
        for block in model.blocks:  # a trained model's bias, not the zero init
            if block.attn.relative_position_bias_table is not None:
                block.attn.relative_position_bias_table.normal_()
    return model


def cct(**overrides):
    torch.manual_seed(0)
    return vitkit.create_model("cct_2_3x2_32", **{**CCT, **overrides}).eval()


def with_duplicates(tokens: torch.Tensor, twice: int, prefix: int = 0) -> torch.Tensor:
    """[prefix][t0, t0, t1, t1, ... (the first `twice` tokens doubled)][the rest]: in the bipartite split (even
    positions vs odd) every doubled token's copies face each other, cosine similarity 1."""
    head, body = tokens[:, :prefix], tokens[:, prefix:]
    doubled = body[:, :twice].repeat_interleave(2, dim=1)
    return torch.cat([head, doubled, body[:, twice:]], dim=1)


@pytest.mark.parametrize("pool", ["seq", "avg"])
def test_cct_merging_exact_duplicates_changes_nothing(pool):
    """ToMe's defining property, with proportional attention in the blocks and in sequence pooling: a model that
    merges exact duplicates computes what the plain model computes on the sequence with them (CCT's blocks see
    no positions, so the order of tokens does not matter). Mean pooling is the plain mean (as for ViT), so there
    only the uniform case holds: every token doubled."""
    plain = cct(global_pool=pool)
    tokens = torch.randn(2, 6, CCT["embed_dim"])
    twice = 3 if pool == "seq" else 6
    x = with_duplicates(tokens, twice)
    merging = apply_tome(cct(global_pool=pool), [twice])  # all `twice` pairs merged in block 0
    with torch.no_grad():
        want = plain.forward_head(plain.forward_tokens(x))
        got = merging.forward_head(merging.forward_tokens(x))
    assert merging.token_state.size.shape[1] == x.shape[1] - twice
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if pool == "seq":  # without log(size) in the pooling score the merged tokens would weigh half: it matters
        merging.attention_pool.__class__ = torch.nn.Linear
        with torch.no_grad():
            assert not torch.allclose(merging.forward_head(merging.forward_tokens(x)), want, atol=1e-4)


def test_beit_merging_exact_duplicates_changes_nothing_without_position_bias():
    """The same property through BEiT's block (LayerScale, q/v biases, class token kept): with no relative
    position bias the blocks see no positions."""
    plain = beit(use_rel_pos_bias=False)
    tokens = torch.randn(2, 7, BEIT["embed_dim"])  # class token + 6
    x = with_duplicates(tokens, 6, prefix=1)
    merging = apply_tome(beit(use_rel_pos_bias=False), [6])
    with torch.no_grad():
        torch.testing.assert_close(merging.forward_tokens(x)[:, 0], plain.forward_tokens(x)[:, 0], atol=1e-5,
                                   rtol=1e-5)


def test_beit_merging_duplicates_that_share_a_position_bias_changes_nothing():
    """With the relative position bias: give each pair of duplicates one "position" (the bias index depends only
    on which original a token copies), and merging them with the bias averaged over the originals computes what
    the plain model computes on the whole sequence."""
    k, grid_tokens = 8, 64
    tokens = torch.randn(2, 1 + grid_tokens - k, BEIT["embed_dim"])
    x = with_duplicates(tokens, k, prefix=1)  # 65 tokens: the class token, 8 doubled, 48 single
    group = torch.tensor([0] + [1 + i // 2 for i in range(2 * k)] + list(range(1 + k, 1 + grid_tokens - k)))
    rows = (2 * 8 - 1) ** 2 + 3
    index = (group[:, None] * 31 + group[None, :] * 17) % rows  # any index that depends on the groups only
    models = [beit(), beit()]
    for model in models:
        for block in model.blocks:
            block.attn.relative_position_index.copy_(index)
    plain, merging = models[0], apply_tome(models[1], [k])
    with torch.no_grad():
        got, want = merging.forward_tokens(x), plain.forward_tokens(x)
    assert got.shape[1] == x.shape[1] - k
    torch.testing.assert_close(got[:, 0], want[:, 0], atol=1e-5, rtol=1e-5)


def test_position_bias_of_merged_tokens_is_the_mean_over_their_originals():
    bias = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert reduce_position_bias(bias, None) is bias
    source = torch.tensor([[[1.0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]]])  # token 1 merged from originals 1, 2
    got = reduce_position_bias(bias, source)[0, 0]
    b = bias[0, 0]
    want = torch.tensor([
        [b[0, 0], (b[0, 1] + b[0, 2]) / 2, b[0, 3]],
        [(b[1, 0] + b[2, 0]) / 2, b[1:3, 1:3].mean(), (b[1, 3] + b[2, 3]) / 2],
        [b[3, 0], (b[3, 1] + b[3, 2]) / 2, b[3, 3]],
    ])
    torch.testing.assert_close(got, want)
    identity = torch.eye(4)[None]
    torch.testing.assert_close(reduce_position_bias(bias, identity), bias)


@pytest.mark.parametrize("spec", ["tome:r=4", "evit:keep=0.5", "evit:keep=0.7,tome:r=[0,3,3]"])
def test_beit_with_relative_position_bias_reduces_tokens(spec):
    model = beit()
    x = torch.randn(2, 3, 32, 32)
    fast = vitkit.optimize(model, spec)
    with torch.no_grad():
        reference, reduced = model(x), fast(x)
        features = [m.forward_head(m.forward_features(x), pre_logits=True) for m in (model, fast)]
        tokens = fast.forward_intermediates(x, output_fmt="NLC")[1]
    assert all(type(b) is ReducingBeitBlock for b in fast.blocks[:1]) and fast.token_state.trace_source
    assert fast.token_state.size.shape[1] < 65 and torch.isfinite(reduced).all()
    assert tokens[-1].shape[1] < 64
    assert reduced.shape == reference.shape and features[1].shape == features[0].shape
    with pytest.raises(ValueError, match="cannot be laid out as NCHW maps; use output_fmt='NLC'"):
        fast.forward_intermediates(x)
    assert list(fast.state_dict()) == list(model.state_dict())


def test_cct_keeps_its_keys_and_refuses_evit_by_name():
    model = cct()
    fast = vitkit.optimize(model, "tome:r=8")
    assert type(fast.attention_pool) is ProportionalPoolScore and type(fast.blocks[0]) is ReducingCctBlock
    assert type(model.attention_pool) is torch.nn.Linear  # the original is untouched
    assert list(fast.state_dict()) == list(model.state_dict())
    with torch.no_grad():
        assert fast(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(ValueError, match=r"^EViT ranks tokens by class-token attention, and this Cct has no class "
                                         r"token; ToMe \(tome:r=N\) merges tokens without one$"):
        vitkit.optimize(model, "evit:keep=0.5")


@pytest.mark.parametrize("bias", ["per_block", "shared"])
def test_evit_alone_on_a_deeper_beit_reduces_every_later_blocks_bias(bias):
    """EViT prunes at a few blocks; the blocks between them see fewer tokens too and need the bias reduced
    (every block is swapped when the model has a relative position bias)."""
    kwargs = {"depth": 6} if bias == "per_block" else {"depth": 6, "use_rel_pos_bias": False,
                                                        "use_shared_rel_pos_bias": True}
    model = beit(**kwargs)
    if model.rel_pos_bias is not None:
        with torch.no_grad():
            model.rel_pos_bias.relative_position_bias_table.normal_()
    fast = vitkit.optimize(model, "evit:keep=0.7")
    assert all(type(b) is ReducingBeitBlock for b in fast.blocks)
    with torch.no_grad():
        out = fast(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    assert fast.token_state.size.shape[1] < 65
