"""Versioned ``.npz`` files: named arrays plus a JSON ``meta`` entry, written atomically.

The toolkit's small binary outputs (descriptors files, fitted whitenings) share this layout, so
they are written, versioned and checked on reading in one place. Reading never unpickles
(``allow_pickle=False``: an object array is refused, not run) and every way a file can be damaged
(missing, truncated, not a zip, a missing entry, a Python-object or complex-valued array) is one
clear :class:`~retrievalkit.errors.RkitError` naming the file.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .errors import RkitError


def save_npz(path: str | Path, meta: dict[str, Any], format_version: int,
             json_default: Callable[[Any], Any] | None = None, **arrays: np.ndarray) -> Path:
    """Write ``arrays`` and ``meta`` (with ``format_version``) to ``path`` atomically."""
    path = Path(path)
    meta = {"format_version": format_version, **meta}
    size = sum(np.asarray(a).nbytes for a in arrays.values())
    with atomic_path(path, suffix=".npz", size_hint=size) as tmp:
        np.savez(tmp, **arrays, meta=np.asarray(json.dumps(meta, default=json_default)))
    return path


def load_npz(path: str | Path, keys: Sequence[str], *, what: str, made_by: str, format_version: int,
             meta_required: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read the arrays ``keys`` and the meta of a file written by :func:`save_npz`.

    ``what`` names the kind of file and ``made_by`` the command that writes it, for the error
    messages: a missing file, a file of another kind and a file from a newer format version are
    each a clear :class:`RkitError`.
    """
    path = Path(path)
    if not path.is_file():
        raise RkitError(f"{what} {path} does not exist: create it with `{made_by}`")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("a single array (.npy), not an .npz archive")
        with data:
            arrays = {key: _array(data, key, path, what) for key in keys}
            meta = json.loads(str(data["meta"])) if meta_required or "meta" in data.files else {}
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise RkitError(f"{path} is damaged or truncated ({exc}): it is not a complete {what}; "
                        f"create it again with `{made_by}`") from exc
    except (OSError, KeyError, ValueError) as exc:
        raise RkitError(f"{path} is not a {what} written by `{made_by}` ({exc})") from exc
    if not isinstance(meta, dict):
        raise RkitError(f"{path} is not a {what} written by `{made_by}` (its meta is not a JSON object)")
    if meta.get("format_version", 0) > format_version:
        raise RkitError(f"{path} was written by a newer retrievalkit (format "
                        f"{meta['format_version']}): upgrade retrievalkit to read it")
    return arrays, meta


def _array(data: Any, key: str, path: Path, what: str) -> np.ndarray:
    """One entry of an open ``.npz``: object arrays are refused (never unpickled), complex too."""
    try:
        array = data[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise RkitError(f"{path}: entry {key!r} is an array of Python objects, which is never read "
                            f"(unpickling can run code): this is not a {what} written by retrievalkit") from None
        raise
    if array.dtype.kind == "c":
        raise RkitError(f"{path}: entry {key!r} holds complex numbers ({array.dtype}); a {what} holds real "
                        f"numbers: create it again with retrievalkit")
    return array
