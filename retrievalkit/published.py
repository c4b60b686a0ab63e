"""The networks published by Radenović, Tolias, Chum (TPAMI 2018) in their own checkpoint format.

``--model`` accepts, besides a ``rkit train`` folder:

* a published name, e.g. ``retrievalSfM120k-resnet101-gem``, ``rSfM120k-tl-resnet101-gem-w``,
  ``gl18-tl-resnet101-gem-w`` (:data:`PUBLISHED`; URLs from the authors' ``cirtorch/examples``
  scripts), downloaded once into ``$RKIT_CACHE/networks`` and verified against the sha256 prefix
  its file name carries (``...-gem-b80fb85.pth``);
* a path to such a ``.pth`` file.

Format (``cnnimageretrieval-pytorch``): a dict with ``meta`` (``architecture``, ``pooling``,
``whitening``, ``regional``, ``local_whitening``, ``mean``, ``std``, ``outputdim`` and optionally
``Lw``) and ``state_dict`` (``features.<i>.*`` = the children of the torchvision network's
convolutional part, ``pool.p`` for GeM, ``whiten.weight/bias`` for the projection of the ``-w``
networks). Their forward pass is ours (docs/definitions.md §1): features -> pooling -> L2 -> whitening
(``whiten``, a linear layer) -> L2, on images normalised with ``mean``/``std``.

Mapping: ``vgg16`` -> our ``vgg16:last_pool=false`` (their features end at the last ReLU),
``resnet50/101/152`` -> ours; ``gem`` (their p) / ``mac`` / ``spoc`` (average = ``spoc:center_prior=false``
up to the L2 normalisation); ``whiten`` -> the model's whitening layer. ``Lw``, the learned
whitening they computed as post-processing (Radenović et al. ECCV 2016: psi(f) = L2(P (f - m))),
becomes the whitening layer with weight P and bias -P m: add ``:lw=ss`` (single-scale, the
default when the file has ``Lw`` and no ``whiten`` layer), ``:lw=ms`` (multi-scale) or
``:lw=none`` to the name or path, and ``:lwset=retrieval-SfM-30k`` for the other training set.
Regional pooling (R-MAC), local whitening and other architectures are refused with a clear error.

The file is read with ``torch.load(weights_only=True)``; ``Lw`` holds NumPy arrays, so exactly the
globals that rebuild a NumPy array (:data:`ALLOWED_GLOBALS`) are allowed in addition, nothing else.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .download import Transfer, cache_dir, download
from .errors import RkitError

if TYPE_CHECKING:
    from .model import WhiteningLayer

_NETWORKS = "http://cmp.felk.cvut.cz/cnnimageretrieval/data/networks"
#: published name -> URL (cnnimageretrieval-pytorch, cirtorch/examples/test.py and test_e2e.py)
PUBLISHED: dict[str, str] = {
    "retrievalSfM120k-vgg16-gem": f"{_NETWORKS}/retrieval-SfM-120k/retrievalSfM120k-vgg16-gem-b4dcdc6.pth",
    "retrievalSfM120k-resnet101-gem": f"{_NETWORKS}/retrieval-SfM-120k/retrievalSfM120k-resnet101-gem-b80fb85.pth",
    "rSfM120k-tl-resnet50-gem-w": f"{_NETWORKS}/retrieval-SfM-120k/rSfM120k-tl-resnet50-gem-w-97bf910.pth",
    "rSfM120k-tl-resnet101-gem-w": f"{_NETWORKS}/retrieval-SfM-120k/rSfM120k-tl-resnet101-gem-w-a155e54.pth",
    "rSfM120k-tl-resnet152-gem-w": f"{_NETWORKS}/retrieval-SfM-120k/rSfM120k-tl-resnet152-gem-w-f39cada.pth",
    "gl18-tl-resnet50-gem-w": f"{_NETWORKS}/gl18/gl18-tl-resnet50-gem-w-83fdc30.pth",
    "gl18-tl-resnet101-gem-w": f"{_NETWORKS}/gl18/gl18-tl-resnet101-gem-w-a4d43db.pth",
    "gl18-tl-resnet152-gem-w": f"{_NETWORKS}/gl18/gl18-tl-resnet152-gem-w-21278d5.pth",
}
#: their architecture -> our backbone spec
ARCHITECTURES = {"vgg16": "vgg16:last_pool=false", "resnet50": "resnet50", "resnet101": "resnet101",
                 "resnet152": "resnet152"}
#: their pooling -> our pooling spec (GeM's p is loaded from the state dict)
POOLINGS = {"gem": "gem", "mac": "mac", "spoc": "spoc:center_prior=false"}
LW_KINDS = ("ss", "ms", "none")
DEFAULT_LW_SET = "retrieval-SfM-120k"


def _numpy_globals() -> list[Any]:
    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed: list[Any] = [np.ndarray, np.dtype]
    numeric = ("Float16DType", "Float32DType", "Float64DType", "Int8DType", "Int16DType", "Int32DType",
               "Int64DType", "UInt8DType", "UInt16DType", "UInt32DType", "UInt64DType", "BoolDType")
    dtypes = getattr(np, "dtypes", None)   # NumPy >= 1.25: a dtype unpickles to its own class
    allowed += [getattr(dtypes, name) for name in numeric if dtypes is not None and hasattr(dtypes, name)]
    for name in ("_reconstruct", "scalar"):
        function = getattr(core, name)
        allowed += [(function, f"numpy.core.multiarray.{name}"), (function, f"numpy._core.multiarray.{name}")]
    return allowed


#: what a checkpoint may hold besides tensors and plain containers: numeric NumPy arrays (for ``Lw``):
#: ``ndarray``, ``dtype`` and its numeric classes, ``_reconstruct`` and ``scalar`` (both module paths,
#: NumPy 1 wrote ``numpy.core``, NumPy 2 ``numpy._core``). No object arrays, no other class.
ALLOWED_GLOBALS = _numpy_globals()


@dataclasses.dataclass(frozen=True)
class PublishedSpec:
    """``NAME_OR_PATH[:lw=ss|ms|none][:lwset=SET]`` as given to ``--model``."""

    source: str
    lw: str | None = None
    lw_set: str = DEFAULT_LW_SET

    @classmethod
    def parse(cls, text: str) -> PublishedSpec:
        source, *options = str(text).split(":")
        values: dict[str, str] = {}
        for option in options:
            key, _, value = option.partition("=")
            if key not in ("lw", "lwset") or not value or (key == "lw" and value not in LW_KINDS):
                raise RkitError(f"--model {text}: options are :lw=ss|ms|none and :lwset=NAME "
                                f"(e.g. {source}:lw=ms)")
            values[key] = value
        return cls(source, values.get("lw"), values.get("lwset", DEFAULT_LW_SET))


def is_published_model(text: str | Path) -> bool:
    """Whether ``--model text`` names a published network or an authors'-format ``.pth`` file."""
    spec = PublishedSpec.parse(str(text)) if ":" in str(text) and not Path(str(text)).exists() else PublishedSpec(str(text))
    if spec.source in PUBLISHED or (not Path(spec.source).exists() and _close_names(spec.source)):
        return True        # a near miss gets the list of published names, not "not a model folder"
    path = Path(spec.source)
    return path.suffix in (".pth", ".pt") and not path.is_dir()


def _close_names(name: str) -> list[str]:
    import difflib

    return difflib.get_close_matches(name, list(PUBLISHED), n=1, cutoff=0.8)


def fetch_published(name: str) -> Path:
    """The checkpoint of a published network, downloaded once and verified by its name's hash."""
    url = PUBLISHED[name]
    return download(url, directory=cache_dir() / "networks", sha256="auto", transfer=Transfer(),
                    hint=f"Or download {url} by other means and give its path: --model PATH.pth "
                         f"(the authors publish it over http: RKIT_ALLOW_HTTP=1 accepts that; the file is "
                         f"still verified against the hash in its name).")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``{"meta": ..., "state_dict": ...}`` from an authors'-format file, safely unpickled."""
    path = Path(path)
    if not path.is_file():
        close = _close_names(str(path))
        raise RkitError(f"--model {path}: no such file{f' (did you mean {close[0]}?)' if close else ''}. Give a "
                        f"published name ({', '.join(PUBLISHED)}), an authors'-format .pth file, or an "
                        f"`rkit train` model folder")
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RkitError(f"refusing to load {path}: it holds a pickled object beyond tensors, plain containers "
                        f"and NumPy arrays ({first}). An authors' network needs nothing else: the file is not "
                        f"one, or was tampered with") from None
    except Exception as exc:  # zip or version errors: not a checkpoint
        raise RkitError(f"cannot read {path} as a PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, Mapping) or not isinstance(state.get("meta"), Mapping) \
            or not isinstance(state.get("state_dict"), Mapping):
        raise RkitError(f"{path} is not a checkpoint of the authors' format (a dict with 'meta' and "
                        f"'state_dict'); for a plain state dict use --weights PATH with --backbone")
    return dict(state)


def check_meta(meta: Mapping[str, Any], path: str) -> tuple[str, str]:
    """Our (backbone, pooling) specs for ``meta``; refuse what cannot be mapped."""
    missing = [key for key in ("architecture", "pooling", "mean", "std") if key not in meta]
    if missing:
        raise RkitError(f"{path}: its meta lacks {', '.join(missing)}; an authors' checkpoint names "
                        f"architecture, pooling, mean and std")
    if meta.get("regional"):
        raise RkitError(f"{path} uses regional pooling (R-{meta['pooling']}), which retrievalkit does not "
                        f"implement: use a global-pooling network (e.g. retrievalSfM120k-resnet101-gem)")
    if meta.get("local_whitening"):
        raise RkitError(f"{path} applies local whitening before pooling, which retrievalkit does not implement: "
                        f"use a network without it")
    architecture, pooling = str(meta["architecture"]), str(meta["pooling"])
    if architecture not in ARCHITECTURES:
        raise RkitError(f"{path}: architecture {architecture!r} has no retrievalkit backbone; mapped are "
                        f"{', '.join(ARCHITECTURES)}")
    if pooling not in POOLINGS:
        raise RkitError(f"{path}: pooling {pooling!r} has no retrievalkit equivalent; mapped are "
                        f"{', '.join(POOLINGS)}")
    return ARCHITECTURES[architecture], POOLINGS[pooling]


def _backbone_state(backbone: nn.Module, state: Mapping[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    """Their ``features.<i>.*`` keys renamed to our backbone's (VGG keeps ``features``; a ResNet's
    i-th child is ``conv1, bn1, relu, maxpool, layer1..4``)."""
    children = [name for name, _ in backbone.named_children()]
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith("features."):
            continue
        if children == ["features"]:
            renamed[key] = value
            continue
        index, _, rest = key[len("features."):].partition(".")
        if not index.isdigit() or int(index) >= len(children):
            raise RkitError(f"{path}: state_dict key {key!r} does not fit a {children} network: the file is damaged")
        renamed[f"{children[int(index)]}.{rest}"] = value
    return renamed


def _load_exact(module: nn.Module, state: Mapping[str, torch.Tensor], what: str, path: str) -> None:
    try:
        module.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        raise RkitError(f"{path}: the {what} tensors do not fit ({str(exc).splitlines()[0]}...): the meta and "
                        f"the state_dict disagree, the file is damaged") from None


def _linear(weight: np.ndarray | torch.Tensor, bias: np.ndarray | torch.Tensor) -> nn.Linear:
    weight = torch.as_tensor(np.asarray(weight), dtype=torch.float32)
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(torch.as_tensor(np.asarray(bias), dtype=torch.float32).reshape(-1))
    return layer


def lw_layer(meta: Mapping[str, Any], spec: PublishedSpec, has_whiten: bool, path: str) -> WhiteningLayer | None:
    """The ``Lw`` post-processing as a linear layer (weight P, bias -P m), or None (module docstring)."""
    available = meta.get("Lw") or {}
    wanted = spec.lw if spec.lw is not None else ("none" if has_whiten or not available else "ss")
    if wanted == "none":
        return None
    if has_whiten:
        raise RkitError(f"{path} already has a whitening layer ('whiten'); its Lw would be a second one: "
                        f"leave out :lw=, or apply another whitening with --whitening FILE")
    entry = available.get(spec.lw_set, {}).get(wanted) if isinstance(available, Mapping) else None
    if not isinstance(entry, Mapping) or "m" not in entry or "P" not in entry:
        sets = ", ".join(f"{s}:{'/'.join(k)}" for s, k in available.items()) if available else "none"
        raise RkitError(f"{path} has no Lw {spec.lw_set}/{wanted} (it has: {sets}): choose :lw=ss|ms|none "
                        f"and :lwset=NAME")
    from .model import WhiteningLayer

    projection = np.asarray(entry["P"], dtype=np.float64)
    mean = np.asarray(entry["m"], dtype=np.float64).reshape(-1)
    return WhiteningLayer.from_arrays(projection, -projection @ mean)   # float64, as their whitenapply


def load_published_model(text: str | Path, host: Any = None):
    """A :class:`retrievalkit.model.RetrievalModel` from a published name or authors'-format file."""
    from .model import ModelConfig, build_model

    spec = PublishedSpec.parse(str(text)) if not Path(str(text)).exists() else PublishedSpec(str(text))
    path = fetch_published(spec.source) if spec.source in PUBLISHED else Path(spec.source)
    checkpoint = read_checkpoint(path)
    meta, state = checkpoint["meta"], checkpoint["state_dict"]
    backbone, pooling = check_meta(meta, str(path))
    has_whiten = "whiten.weight" in state
    lw = lw_layer(meta, spec, has_whiten, str(path))     # refuses an Lw on top of a whiten layer
    model = build_model(ModelConfig(backbone=backbone, pooling=pooling, weights="none"), host)
    model.config.weights = str(text)
    _load_exact(model.backbone, _backbone_state(model.backbone, state, str(path)), "backbone", str(path))
    pool_state = {k[len("pool."):]: v for k, v in state.items() if k.startswith("pool.")}
    _load_exact(model.pooling, pool_state, "pooling", str(path))
    if has_whiten:   # part of their network: applied to every scale before the scales are averaged
        model.set_whitening(_linear(state["whiten.weight"], state["whiten.bias"]), each_scale=True)
    if lw is not None:
        model.set_whitening(lw)
    model.input_mean.copy_(torch.tensor([float(v) for v in meta["mean"]]).view(1, 3, 1, 1))
    model.input_std.copy_(torch.tensor([float(v) for v in meta["std"]]).view(1, 3, 1, 1))
    return model.eval()
