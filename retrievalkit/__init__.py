"""retrievalkit: instance-level image retrieval, built from plugins.

Public API::

    from retrievalkit import hookimpl, Component, get_host      # writing plugins

The data path (images -> descriptors -> whitening -> index -> rankings -> metrics) is one module
per step (``retrievalkit.extract``, ``.descriptors``, ``.whitening``, ``.index``, ``.search``,
``.evaluate``); docs/api.md lists the calls, with an end-to-end example.

Importing the package is light (no torch, no pluggy): ``hookimpl`` and ``get_host`` are loaded
on first use (PEP 562 module ``__getattr__``), so ``rkit --help`` starts in a fraction of a second.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .components import Component, ComponentSpec
from .errors import RkitError

if TYPE_CHECKING:
    from .hookspecs import hookimpl
    from .plugins import get_host

__all__ = ["Component", "ComponentSpec", "RkitError", "hookimpl", "get_host", "__version__"]
__version__ = "0.1.0"

#: exported name -> the module that defines it, imported on first use
_LAZY = {"hookimpl": ".hookspecs", "get_host": ".plugins"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'retrievalkit' has no attribute {name!r}")
