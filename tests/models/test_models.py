"""create_model: every arch form, the normalisation layer, local weights, errors."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from multiguard.models.factory import create_model
from multiguard.models.networks import Normalize, SmallCNN


def test_small_cnn_shape_and_structure():
    model = create_model("small_cnn", num_classes=10, image_size=32, in_channels=1)
    assert model(torch.rand(4, 1, 32, 32)).shape == (4, 10)
    net = model.net
    assert isinstance(net, SmallCNN)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128]
    assert all(c.stride == (2, 2) and c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 3
    assert isinstance(net[-1], nn.Linear) and net[-1].in_features == 128
    assert model.mean == [0.0] and model.std == [1.0]


def test_normalisation_is_a_layer_inside_the_model():
    model = create_model("small_cnn", 3, 16, in_channels=3, mean=[0.5, 0.4, 0.3], std=[0.2])
    assert isinstance(model[0], Normalize)
    x = torch.rand(2, 3, 16, 16)
    manual = (x - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / 0.2
    model.eval()
    assert torch.allclose(model(x), model.net(manual), atol=1e-6)
    assert "normalize.mean" in model.state_dict() and model.std == [0.2, 0.2, 0.2]


@pytest.mark.slow
def test_timm_and_torchvision_models_build_offline():
    timm_model = create_model("timm:resnet18", num_classes=5, image_size=32)
    assert timm_model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    assert timm_model.mean == pytest.approx([0.485, 0.456, 0.406])
    tv_model = create_model("torchvision:resnet18", num_classes=4, image_size=32)
    assert tv_model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 4)


def test_local_pretrained_weights_are_loaded(tmp_path):
    source = create_model("timm:resnet18", num_classes=1000, image_size=32)
    torch.save(source.net.state_dict(), tmp_path / "resnet18.pth")
    with pytest.warns(UserWarning, match="fc"):
        model = create_model("timm:resnet18", num_classes=7, image_size=32, pretrained=tmp_path / "resnet18.pth")
    assert torch.equal(model.net.conv1.weight, source.net.conv1.weight)
    assert model.net.fc.out_features == 7  # the 1000-class head is not loaded
    small = create_model("small_cnn", 10, 32, 1)
    torch.save({"state_dict": small.net.state_dict()}, tmp_path / "small.pt")
    again = create_model("small_cnn", 10, 32, 1, pretrained=str(tmp_path / "small.pt"))
    assert all(torch.equal(a, b) for a, b in zip(small.net.state_dict().values(),
                                                 again.net.state_dict().values(), strict=True))


def test_user_factory(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "import torch.nn as nn\n"
        "def tiny(num_classes, in_channels, image_size):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, num_classes))\n"
        "def only_classes(num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = create_model("my_models:tiny", num_classes=3, image_size=8, in_channels=2)
    assert model(torch.rand(5, 2, 8, 8)).shape == (5, 3)
    assert create_model("my_models:only_classes", 4, 8)(torch.rand(1, 3, 8, 8)).shape == (1, 4)
    sys.modules.pop("my_models", None)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"arch must be one of 'small_cnn', 'timm:<name>', 'torchvision:<name>'"):
        create_model("resnet50", 3, 32)
    with pytest.raises(ValueError, match="arch: timm has no model 'no_such_net'"):
        create_model("timm:no_such_net", 3, 32)
    with pytest.raises(ValueError, match="arch: torchvision has no model 'no_such_net'"):
        create_model("torchvision:no_such_net", 3, 32)
    with pytest.raises(ValueError, match="arch: cannot import module 'no_such_module_xyz'"):
        create_model("no_such_module_xyz:factory", 3, 32)
    with pytest.raises(ValueError, match="--pretrained imagenet: only timm:<name> and torchvision:<name>"):
        create_model("small_cnn", 3, 32, pretrained="imagenet")
    with pytest.raises(ValueError, match="--pretrained no_such_weights.pth: no such file"):
        create_model("small_cnn", 3, 32, pretrained="no_such_weights.pth")
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        create_model("small_cnn", 0, 32)
    with pytest.raises(ValueError, match="mean and std must have 1 or in_channels=3"):
        create_model("small_cnn", 3, 32, mean=[0.1, 0.2])
