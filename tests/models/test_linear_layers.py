"""`apply_linear`: the CPU inference path (oneDNN, activation fused) gives what the module would, and leaves
training, hooks, replaced modules and autocast to the plain path."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitkit.layers import Mlp, apply_linear

ACTIVATIONS = [None, nn.Identity(), nn.GELU(), nn.GELU(approximate="tanh"), nn.ReLU(), nn.SiLU(), nn.Sigmoid()]


def reference(x, layer, act=None, bias=None):
    y = F.linear(x, layer.weight, layer.bias if bias is None else bias)
    return y if act is None else act(y)


@pytest.fixture(params=["every size", "default sizes"])
def size_thresholds(request):
    """Tiny layers stay below oneDNN's size thresholds: with them at 0 the oneDNN path runs for every layer."""
    if request.param == "every size":
        request.getfixturevalue("onednn_for_every_size")


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: type(a).__name__ + getattr(a, "approximate", ""))
@pytest.mark.parametrize("shape", [(5, 24), (2, 7, 24), (0, 24), (300, 160)])
def test_inference_matches_the_module(act, shape, size_thresholds):
    torch.manual_seed(0)
    layer = nn.Linear(shape[-1], 40)
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(apply_linear(x, layer, act), reference(x, layer, act), atol=1e-5, rtol=1e-5)


def test_bias_argument_gives_a_layer_without_one_a_bias(size_thresholds):
    torch.manual_seed(0)
    layer, bias = nn.Linear(24, 40, bias=False), torch.randn(40)
    x = torch.randn(3, 9, 24)
    with torch.no_grad():
        torch.testing.assert_close(apply_linear(x, layer, bias=bias), x @ layer.weight.T + bias, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="without a bias of its own"):
        apply_linear(x, nn.Linear(24, 40), bias=bias)


def test_a_patched_forward_is_called(size_thresholds):
    layer = nn.Linear(8, 8)
    layer.forward = lambda x: torch.zeros(x.shape[0], 8)
    with torch.no_grad():
        assert torch.equal(apply_linear(torch.randn(3, 8), layer), torch.zeros(3, 8))


def test_flop_count_sees_the_onednn_path(onednn_for_every_size):
    from vitkit.evaluation.flops import count_flops

    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 40))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(12, 40)

        def forward(self, x):
            return apply_linear(x.flatten(1), self.fc, nn.GELU())

    assert count_flops(Net(), (3, 2, 2), batch_size=5) == count_flops(model, (3, 2, 2), batch_size=5) == 2 * 5 * 12 * 40


def test_gradients_are_those_of_the_plain_layer():
    torch.manual_seed(0)
    layer, act = nn.Linear(24, 40), nn.GELU()
    x = torch.randn(4, 24, requires_grad=True)
    apply_linear(x, layer, act).square().sum().backward()
    grads = x.grad.clone(), layer.weight.grad.clone()
    x.grad, layer.weight.grad = None, None
    act(layer(x)).square().sum().backward()
    torch.testing.assert_close(grads[0], x.grad)
    torch.testing.assert_close(grads[1], layer.weight.grad)


def test_hooks_on_the_layer_still_run(size_thresholds):
    layer, seen = nn.Linear(8, 8), []
    layer.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    with torch.no_grad():
        apply_linear(torch.randn(3, 8), layer, nn.GELU())
    assert seen == [torch.Size([3, 8])]


def test_a_replaced_module_is_called_as_it_is():
    torch.manual_seed(0)
    mlp = Mlp(16, 64).eval()
    quantized = torch.ao.quantization.quantize_dynamic(mlp, {nn.Linear}, dtype=torch.qint8)
    assert type(quantized.fc1) is not nn.Linear
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(quantized(x), mlp(x), atol=0.05, rtol=0.05)


def test_autocast_keeps_the_plain_path_and_its_dtype(size_thresholds):
    layer, x = nn.Linear(16, 16), torch.randn(2, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert apply_linear(x, layer, nn.GELU()).dtype == torch.bfloat16
