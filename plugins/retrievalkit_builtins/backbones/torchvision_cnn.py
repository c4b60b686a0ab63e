"""Torchvision CNNs cut after their last convolutional block (Radenović et al. 2016, section 3.1).

The retrieval papers use the convolutional part of an ImageNet classifier and drop the fully
connected layers (docs/definitions.md §1): AlexNet and VGG16 keep ``features`` (ending with the last max
pooling: 256 and 512 channels, stride 32), ResNet50/101/152 keep everything before the global
average pooling (``conv1`` ... ``layer4``: 2048 channels, stride 32).

``last_pool=false`` (AlexNet, VGG16) drops that final max pooling, so the features end with the
last ReLU (stride 16), as in the networks published by Radenović et al. (their
``cnnimageretrieval-pytorch`` keeps ``features`` without its last layer);
:mod:`retrievalkit.published` builds their VGG16 networks this way.

Input normalisation: the ImageNet statistics torchvision's weights were trained with, mean
(0.485, 0.456, 0.406), std (0.229, 0.224, 0.225), on RGB in [0, 1].

Weights (option ``weights``): ``imagenet`` downloads torchvision's ``IMAGENET1K_V1`` file (the
original weights the papers used; the URL is read from torchvision's weights enum) into the
rkit cache; ``none`` leaves the random initialisation; a path loads a local state dict, either of
the full torchvision model (classifier keys ignored) or of this convolutional part.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import nn

from retrievalkit import Component, hookimpl
from retrievalkit.weights import load_backbone_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFLINE_HINT = ("Without network access use --weights none, --weights PATH.pth (a state dict you "
                "copied here), or --backbone efficientnet-lite0, which ships its ImageNet weights.")


class TorchvisionFeatures(nn.Module):
    """The convolutional part of a torchvision classifier, ``(B, 3, H, W) -> (B, K, H/32, W/32)``.

    The kept submodules keep torchvision's attribute names, so a torchvision state dict loads
    into it key for key.
    """

    def __init__(self, network: nn.Module, kept: list[str], out_channels: int, last_pool: bool = True) -> None:
        super().__init__()
        for name in kept:
            self.add_module(name, getattr(network, name))
        if not last_pool:   # features ends with MaxPool2d: keep the layers before it (indices unchanged)
            self.features = nn.Sequential(*list(self.features.children())[:-1])
        self.out_channels = out_channels
        self.mean = IMAGENET_MEAN
        self.std = IMAGENET_STD

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            images = layer(images)
        return images


_RESNET_PARTS = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
#: name -> (torchvision constructor, weights enum, kept submodules, output channels)
ARCHITECTURES: dict[str, tuple[Callable[..., nn.Module], type, list[str], int]] = {
    "alexnet": (torchvision.models.alexnet, torchvision.models.AlexNet_Weights, ["features"], 256),
    "vgg16": (torchvision.models.vgg16, torchvision.models.VGG16_Weights, ["features"], 512),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights, _RESNET_PARTS, 2048),
    "resnet101": (torchvision.models.resnet101, torchvision.models.ResNet101_Weights, _RESNET_PARTS, 2048),
    "resnet152": (torchvision.models.resnet152, torchvision.models.ResNet152_Weights, _RESNET_PARTS, 2048),
}
#: architectures whose features end with a max pooling that ``last_pool=false`` drops
ENDS_WITH_POOL = ("alexnet", "vgg16")


def build_torchvision_features(architecture: str, weights: str = "imagenet",
                               last_pool: bool = True) -> TorchvisionFeatures:
    """The convolutional part of ``architecture`` with ``weights`` (imagenet, none or a path)."""
    constructor, weights_enum, kept, channels = ARCHITECTURES[architecture]
    module = TorchvisionFeatures(constructor(weights=None), kept, channels, last_pool)
    return load_backbone_weights(module, weights, imagenet_url=weights_enum.IMAGENET1K_V1.url,
                                 offline_hint=OFFLINE_HINT)


def _factory(architecture: str) -> Callable[..., TorchvisionFeatures]:
    if architecture in ENDS_WITH_POOL:
        def factory(weights: str = "imagenet", last_pool: bool = True) -> TorchvisionFeatures:
            return build_torchvision_features(architecture, weights, last_pool)
    else:
        def factory(weights: str = "imagenet") -> TorchvisionFeatures:
            return build_torchvision_features(architecture, weights)

    factory.__name__ = f"build_{architecture}"
    factory.__doc__ = f"{architecture} convolutional part; weights: imagenet, none or a state-dict path."
    return factory


@hookimpl
def rkit_backbones() -> list[Component]:
    return [
        Component(name, _factory(name),
                  f"torchvision {name}, convolutional part ({channels} channels, ImageNet mean/std)",
                  "Radenović et al. ECCV 2016, sec. 3.1 (FC layers removed)")
        for name, (_, _, _, channels) in ARCHITECTURES.items()
    ]
