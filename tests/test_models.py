"""The model zoo: names, shapes, normalisation inside, features for the GraNd proxy."""

from __future__ import annotations

import pytest
import torch

from advprune import models


@pytest.mark.parametrize(
    "name,shape",
    [("small-cnn", (2, 1, 28, 28)), ("preact-resnet18", (2, 3, 32, 32)), ("small-resnet", (2, 3, 32, 32))],
)  # the WideResNets share the code path and cost minutes on a CPU
def test_models_map_images_to_logits(name, shape):
    torch.manual_seed(0)
    model = models.create(name, num_classes=7).eval()
    x = torch.rand(shape)
    logits = model(x)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    assert model.features(x).dim() == 2
    cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, logits, rtol=1e-4, atol=1e-4)


def test_wide_resnet_depths():
    small = models.WideResNet(depth=10, width=1, num_classes=3)
    assert small(torch.rand(1, 3, 32, 32)).shape == (1, 3)
    with pytest.raises(ValueError, match="depth must be 6n \\+ 4"):
        models.WideResNet(depth=30)
    assert sum(p.numel() for p in models.create("wrn-34-10").parameters()) > 40_000_000


def test_normalisation_is_inside():
    model = models.create("small-cnn")
    assert torch.allclose(model.normalize(torch.full((1, 1, 2, 2), 0.2860)), torch.zeros(1, 1, 2, 2), atol=1e-6)


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown model 'resnet50': choose one of preact-resnet18"):
        models.create("resnet50")
    with pytest.raises(ValueError, match="unknown torchvision classification model 'resnet5'"):
        models.create("torchvision:resnet5")
    with pytest.raises(ValueError, match="1- or 3-channel images, got 2"):
        models.create("torchvision:resnet18", in_channels=2)


def test_small_resnet_is_a_twentieth_of_preact_resnet18():
    """The CPU preset's model: the same blocks, widths 16-32-64 and two blocks a stage."""
    from torch.utils.flop_counter import FlopCounterMode

    def flops(name):
        with FlopCounterMode(display=False) as counter:
            models.create(name).eval()(torch.rand(1, 3, 32, 32))
        return counter.get_total_flops()

    assert 15 < flops("preact-resnet18") / flops("small-resnet") < 25
    # the refactor into PreActResNet kept PreActResNet-18's parameter names (old checkpoints still load)
    names = set(models.create("preact-resnet18").state_dict())
    assert {"conv1.weight", "layers.7.conv2.weight", "layers.2.shortcut.weight", "bn.running_mean"} <= names


def test_a_torchvision_model_by_name_with_the_normalisation_in_front():
    torch.manual_seed(0)
    model = models.create("torchvision:resnet18", num_classes=7, in_channels=1, mean=[0.3], std=[0.2]).eval()
    x = torch.rand(2, 1, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 7)
    expected = model.net(((x - 0.3) / 0.2).expand(-1, 3, -1, -1))  # normalised, then the channel repeated
    torch.testing.assert_close(logits, expected)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        models.create("small-cnn", num_classes=1)


def _relu_first_small_cnn(model: torch.nn.Module) -> torch.nn.Module:
    """The textbook order (conv, ReLU, pool) with the model's own weights: what SmallCNN must equal."""
    nn = torch.nn
    b = model.body
    return nn.Sequential(model.normalize, b[0], nn.ReLU(), nn.MaxPool2d(2), b[3], nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), b[7], nn.ReLU(), model.linear)  # fmt: skip


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_small_cnn_pools_before_relu_with_the_same_values_and_gradients(layout):
    torch.manual_seed(3)
    model = models.create("small-cnn").double()
    reference = _relu_first_small_cnn(model)
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64) * 2 - 0.5  # many negative pre-activations
    weights = torch.randn(6, 10, dtype=torch.float64)
    x_ours = x.contiguous(memory_format=layout).requires_grad_(True)
    out = model.to(memory_format=layout)(x_ours)
    grad = torch.autograd.grad((out * weights).sum(), x_ours)[0]
    x_ref = x.clone().requires_grad_(True)
    expected = reference(x_ref)
    expected_grad = torch.autograd.grad((expected * weights).sum(), x_ref)[0]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12)
    assert grad.abs().sum() > 0
    assert grad.is_contiguous(memory_format=layout)


def test_the_flatten_hands_back_a_channels_last_gradient_for_channels_last_input():
    from advprune.models.small_cnn import LayoutKeepingFlatten

    x = torch.randn(3, 4, 5, 6).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    out = LayoutKeepingFlatten()(x)
    torch.testing.assert_close(out, x.detach().flatten(1))
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, x, g)
    assert grad.is_contiguous(memory_format=torch.channels_last) and not grad.is_contiguous()
    torch.testing.assert_close(grad, g.view(3, 4, 5, 6), rtol=0, atol=0)
    x_plain = torch.randn(3, 4, 5, 6, requires_grad=True)
    (grad_plain,) = torch.autograd.grad(LayoutKeepingFlatten()(x_plain), x_plain, g)
    assert grad_plain.is_contiguous()
