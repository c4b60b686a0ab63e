"""retrievalkit: instance-level image retrieval, built from plugins.

Public API::

    from retrievalkit import hookimpl, Component, get_host      # writing plugins

The data path (images -> descriptors -> whitening -> index -> rankings -> metrics) is one module
per step (``retrievalkit.extract``, ``.descriptors``, ``.whitening``, ``.index``, ``.search``,
``.evaluate``); docs/api.md lists the calls, with an end-to-end example.
"""

from __future__ import annotations

from .components import Component, ComponentSpec
from .errors import RkitError
from .hookspecs import hookimpl
from .plugins import get_host

__all__ = ["Component", "ComponentSpec", "RkitError", "hookimpl", "get_host", "__version__"]
__version__ = "0.1.0"
