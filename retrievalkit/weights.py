"""Loading a backbone's weights from ``imagenet``, ``none`` or a local state-dict file.

Every backbone plugin accepts the same ``weights`` option (see :func:`retrievalkit.hookspecs.rkit_backbones`):

``none``       random initialisation (tests, training from scratch);
``imagenet``   the plugin's pretrained file: a URL fetched by :mod:`retrievalkit.download`, or a
               file shipped with a package;
``PATH``       a local state dict (``.pth``/``.pt``), loaded with ``weights_only=True``.

A state dict may belong to a larger model than the backbone module: the full classification
network (its classifier keys are ignored), a saved :class:`retrievalkit.model.RetrievalModel`
(keys under ``backbone.``) or a ``DataParallel`` one (``module.``). :func:`load_state_dict_into`
finds the key prefix under which the module's parameters sit and requires all of them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .download import download
from .errors import RkitError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a file (tensors only, ``weights_only=True``); a checkpoint dict with a
    ``state_dict`` or ``model`` entry is unwrapped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RkitError(
            f"weights file {path} does not exist: give a state-dict file (.pth), or --weights imagenet or none"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip or version errors all mean "not a usable state dict"
        raise RkitError(
            f"cannot read {path} as a PyTorch state dict ({type(exc).__name__}: {exc}): save it with "
            f"torch.save(model.state_dict(), PATH)"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RkitError(f"{path} holds no state dict (a mapping of names to tensors): save model.state_dict()")
    return dict(state)


def _prefix(file_keys: list[str], module_keys: list[str]) -> str:
    """The prefix p such that p + module key is in the file for most module keys."""
    votes: Counter[str] = Counter()
    key_set = set(file_keys)
    for key in file_keys:
        for wanted in module_keys:
            if key.endswith(wanted) and (len(key) == len(wanted) or key[-len(wanted) - 1] == "."):
                votes[key[: len(key) - len(wanted)]] += 1
    if not votes:
        return ""
    best = max(votes.items(), key=lambda kv: (kv[1], -len(kv[0])))[0]
    return best if any(best + k in key_set for k in module_keys) else ""


def load_state_dict_into(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``module``; extra keys are ignored, a missing or misshapen one is an error."""
    own = module.state_dict()
    prefix = _prefix(list(state), list(own))
    selected = {k: state[prefix + k] for k in own if prefix + k in state}
    missing = [k for k in own if k not in selected]
    if missing:
        raise RkitError(
            f"{source} does not fit this backbone: {len(missing)} of its {len(own)} tensors are missing "
            f"(e.g. {', '.join(missing[:3])}). Give the state dict of the same architecture (the full "
            f"classification model or its convolutional part), or --weights none"
        )
    wrong = [k for k, v in selected.items() if v.shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise RkitError(
            f"{source} does not fit this backbone: {k} has shape {tuple(selected[k].shape)}, expected "
            f"{tuple(own[k].shape)}. Give weights of the same architecture, or --weights none"
        )
    module.load_state_dict(selected, strict=True)


def load_backbone_weights(module: nn.Module, weights: str, *, imagenet_url: str | None = None,
                          imagenet_file: str | Path | None = None, offline_hint: str = "") -> nn.Module:
    """Initialise ``module`` from ``weights`` (``none``, ``imagenet`` or a path); returns it.

    ``imagenet`` uses ``imagenet_file`` (a file shipped with a package) if given, else downloads
    ``imagenet_url`` into the cache (``offline_hint`` is appended to a download error: name the
    alternatives). A backbone without ImageNet weights passes neither.
    """
    choice = str(weights).strip()
    if choice.lower() == "none":
        return module
    if choice.lower() == "imagenet":
        if imagenet_file is not None:
            path = Path(imagenet_file)
        elif imagenet_url is not None:
            path = download(imagenet_url, hint=offline_hint)
        else:
            raise RkitError("this backbone has no ImageNet weights: use --weights none or --weights PATH.pth")
        load_state_dict_into(module, read_state_dict(path), f"the ImageNet weights {path.name}")
        return module
    load_state_dict_into(module, read_state_dict(choice), f"the weights file {choice}")
    return module
