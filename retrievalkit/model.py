"""The global descriptor network: backbone + pooling + L2 + (optional) whitening + L2.

docs/definitions.md §1: image -> backbone (convolutional part) -> feature map -> pooling -> L2-normalise
-> optional whitening (an affine layer, weight P and bias -P m, :class:`WhiteningLayer`) ->
L2-normalise. The whitening layer runs :func:`retrievalkit.whitening.whiten_rows` in float64,
the same function that applies a whitening file, so a model carrying a whitening and a
``--whitening FILE`` give identical descriptors. The model takes
images with values in [0, 1] and applies the backbone's own input normalisation itself, so no
caller needs to know which normalisation a backbone wants.

A model is saved as a directory (``rkit train`` output, ``--model DIR``)::

    model.json   the component specs (backbone, pooling) and the whitening's shape
    weights.pt   the state dict (backbone, pooling parameters such as GeM's p, whitening)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_path, write_text_atomic
from .components import ComponentSpec
from .descriptors import l2_normalize
from .errors import RkitError
from .plugins import PluginHost, get_host
from .settings import ModelConfig  # re-exported: defined with the other light settings

MODEL_FORMAT_VERSION = 1


class WhiteningLayer(nn.Module):
    """``L2(W x + b)`` with ``W`` (out, in) and ``b`` (out,) in float64: a fitted whitening.

    Its state-dict keys are those of ``nn.Linear`` (``weight``, ``bias``), so models saved with
    a linear whitening layer load into it. The whitening is fitted (``rkit whiten fit``, the
    final step of ``rkit train``), not trained: it runs without gradient, through
    :func:`retrievalkit.whitening.whiten_rows` (NumPy, float64), and returns the input's dtype
    and device.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=torch.float64), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=torch.float64), requires_grad=False)

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    @classmethod
    def from_arrays(cls, weight: Any, bias: Any) -> WhiteningLayer:
        """A layer with the given weight ``(out, in)`` and bias ``(out,)`` (arrays or tensors)."""
        weight = torch.as_tensor(weight, dtype=torch.float64).detach().cpu()
        layer = cls(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(torch.as_tensor(bias, dtype=torch.float64).detach().cpu().reshape(-1))
        return layer

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        from .whitening import whiten_rows

        if descriptors.requires_grad:
            raise RkitError("the model's whitening layer is fitted, not trained, and passes no gradient: "
                            "remove it before training (model.set_whitening(None))")
        out = whiten_rows(descriptors.detach().cpu().numpy(), self.weight.detach().cpu().numpy(),
                          self.bias.detach().cpu().numpy(), what="the model's whitening layer")
        return torch.from_numpy(out).to(device=descriptors.device, dtype=descriptors.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, float64"


class RetrievalModel(nn.Module):
    """Backbone, pooling and optional whitening; ``forward`` returns L2-normalised descriptors."""

    def __init__(self, backbone: nn.Module, pooling: nn.Module, config: ModelConfig | None = None,
                 whitening: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.config = config or ModelConfig()
        self.register_buffer("input_mean", torch.tensor(backbone.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("input_std", torch.tensor(backbone.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.whitening: WhiteningLayer | None = None
        #: Whiten each scale's descriptor before the scales are combined (the authors' networks with
        #: a trained ``whiten`` layer); otherwise the combined descriptor is whitened, as a fitted
        #: whitening (Lw, PCA-whitening) is applied as post-processing. See :mod:`retrievalkit.extract`.
        #: Set with the layer (:meth:`set_whitening`).
        self.whiten_each_scale = False
        self.set_whitening(whitening)

    @property
    def out_dim(self) -> int:
        """Dimension of the descriptors ``forward`` returns."""
        return self.whitening.out_features if self.whitening is not None else int(self.backbone.out_channels)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone activations for images in [0, 1], shape ``(B, 3, H, W)``."""
        return self.backbone((images - self.input_mean) / self.input_std)

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised pooled descriptors, before whitening."""
        return l2_normalize(self.pooling(self.feature_map(images)))

    def whiten(self, descriptors: torch.Tensor) -> torch.Tensor:
        """Apply the whitening layer (if any), which re-normalises."""
        if self.whitening is None:
            return descriptors
        return self.whitening(descriptors)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.whiten(self.pooled(images))

    def set_whitening(self, layer: nn.Module | None, *, each_scale: bool = False) -> None:
        """Attach (or remove, with ``None``) a whitening layer.

        A :class:`WhiteningLayer` or an ``nn.Linear`` (whose weight and bias are copied into a
        float64 :class:`WhiteningLayer`; e.g. a checkpoint's whitening). ``each_scale``: the
        layer is part of the network and whitens every scale (:attr:`whiten_each_scale`), not a
        fitted post-processing of the combined descriptor.
        """
        if layer is not None and not isinstance(layer, WhiteningLayer):
            if not isinstance(layer, nn.Linear) or layer.bias is None:
                raise RkitError(f"a whitening layer must be a WhiteningLayer or an nn.Linear with bias, "
                                f"got {type(layer).__name__}")
            layer = WhiteningLayer.from_arrays(layer.weight, layer.bias)
        if layer is not None:
            layer = layer.to(self.input_mean.device)
        self.whitening = layer
        self.whiten_each_scale = layer is not None and each_scale

    # -- persistence ---------------------------------------------------------------------
    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``model.json`` and ``weights.pt`` into ``directory`` (atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": MODEL_FORMAT_VERSION,
            **self.config.to_dict(),
            "whitening": None if self.whitening is None else
            {"in_features": self.whitening.in_features, "out_features": self.whitening.out_features,
             "each_scale": self.whiten_each_scale},
            **(extra or {}),
        }
        with atomic_path(directory / "weights.pt") as tmp:
            torch.save(self.state_dict(), tmp)
        write_text_atomic(directory / "model.json", json.dumps(meta, indent=2) + "\n")
        return directory


def build_model(config: ModelConfig, host: PluginHost | None = None) -> RetrievalModel:
    """Build a model from component specs through the plugin host."""
    host = host or get_host()
    backbone = host.build("backbone", ComponentSpec.parse(config.backbone).with_options(weights=config.weights))
    pooling = host.build("pooling", config.pooling)
    return RetrievalModel(backbone, pooling, config)


def load_model(directory: str | Path, host: PluginHost | None = None,
               map_location: str | torch.device = "cpu") -> RetrievalModel:
    """Load a model saved by :meth:`RetrievalModel.save` (e.g. the output of ``rkit train``), or an
    authors'-format network (a published name or ``.pth`` file, :mod:`retrievalkit.published`)."""
    from .published import is_published_model, load_published_model

    if is_published_model(directory):
        return load_published_model(directory, host).to(map_location)
    directory = Path(directory)
    meta_path, weights_path = directory / "model.json", directory / "weights.pt"
    if not meta_path.is_file() or not weights_path.is_file():
        raise RkitError(
            f"{directory} is not a saved model: it needs model.json and weights.pt "
            f"(the output directory of `rkit train`, or RetrievalModel.save)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        config = ModelConfig(backbone=meta["backbone"], pooling=meta["pooling"], weights="none")
        whitening = meta.get("whitening")
        whitening_shape = None if not whitening else (int(whitening["in_features"]), int(whitening["out_features"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise RkitError(f"{meta_path} is damaged ({type(exc).__name__}: {exc}): save the model again "
                        f"(`rkit train`, or RetrievalModel.save)") from None
    model = build_model(config, host)
    model.config.weights = meta.get("weights", "none")
    if whitening_shape is not None:
        model.set_whitening(WhiteningLayer(*whitening_shape), each_scale=bool(whitening.get("each_scale", False)))
    try:
        state = torch.load(weights_path, map_location=map_location, weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # pickle, zip, or keys/shapes that do not fit model.json
        raise RkitError(f"cannot load {weights_path} into the model {directory / 'model.json'} describes "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): "
                        f"save the model again") from None
    return model.eval()     # like a published network: ready to describe images (training calls .train())
