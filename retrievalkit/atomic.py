"""Atomic file output: a file is either the old version or the complete new one, never half.

Every file the toolkit produces is written through :func:`atomic_path`: the data goes to a
temporary file in the same folder, is flushed to disk, and is renamed over the target only when
the writer finished without an exception (including ``KeyboardInterrupt``).

A full disk (``ENOSPC``, or ``EDQUOT``: quota exceeded; or a writer's own "write failed" error,
such as ``torch.save``'s, when the disk is nearly full) while writing becomes a
:class:`~retrievalkit.errors.DiskFullError` naming the file, the space needed and free, and
saying that the previous version of the file is intact.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import DiskFullError, RkitError

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
#: below this many free bytes, a writer's vague "write failed" (torch.save says
#: "PytorchStreamWriter failed writing file ...: file write failed") is taken for a full disk
_NEARLY_FULL = 1 << 20


def _is_disk_full(exc: BaseException, folder: Path) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in _DISK_FULL
    if isinstance(exc, RuntimeError) and "write failed" in str(exc):
        try:
            return shutil.disk_usage(folder).free < _NEARLY_FULL
        except OSError:
            return False
    return False


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def disk_full_error(target: Path, tmp: Path, size_hint: int | None) -> DiskFullError:
    """The message for a write of ``target`` (through ``tmp``) that ran out of space."""
    written = tmp.stat().st_size if tmp.exists() else 0
    needed = f"{_size(size_hint)}" if size_hint else f"more than the {_size(written)} written before it filled"
    try:
        free = f"; {_size(shutil.disk_usage(target.parent).free)} free there"
    except OSError:
        free = ""
    old = (f"the previous {target.name} is intact" if target.exists()
           else f"no {target.name} was written")
    return DiskFullError(f"no space left on the disk while writing {target}: it needed {needed}{free}. "
                         f"Nothing was replaced ({old}). Free some space (or write elsewhere) and run "
                         f"the command again.")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str | None = None,
                size_hint: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    ``suffix`` defaults to the target's own suffix, so libraries that append an extension
    (``numpy.savez`` adds ``.npz``) write to the path they are given. ``size_hint`` (bytes, if
    known) is quoted as the space needed when the disk fills up.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=suffix if suffix is not None else target.suffix,
        dir=target.parent,
    )
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates the file readable by its owner only; give it the permissions a plain
    # open() would (0o666 less the umask), so outputs are shared like any other file.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except (OSError, RuntimeError) as exc:
        if _is_disk_full(exc, target.parent):
            raise disk_full_error(target, tmp, size_hint) from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``target`` atomically (UTF-8)."""
    data = text.encode("utf-8")
    with atomic_path(target, size_hint=len(data)) as tmp:
        tmp.write_bytes(data)


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target, size_hint=len(data)) as tmp:
        tmp.write_bytes(data)


def read_json_manifest(file: Path, *, fmt: str, version: int, what: str, missing: str, remedy: str) -> dict:
    """Read a versioned JSON manifest written next to an output (a descriptor store, an index).

    ``fmt`` and ``version`` are the format tag and the newest version this code reads; ``what``
    names the thing in messages, ``missing`` says how to make one, ``remedy`` how to replace a
    damaged one. Each failure is a :class:`RkitError` saying what to do.
    """
    import json

    if not file.is_file():
        raise RkitError(f"{file.parent} is not {what} (no {file.name}): {missing}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RkitError(f"{file} is damaged ({exc}): {remedy}") from exc
    if not isinstance(data, dict) or data.get("format") != fmt:
        found = data.get("format") if isinstance(data, dict) else None
        raise RkitError(f"{file} is not {what} manifest (format {found!r}): {remedy}")
    if data.get("version", 0) > version:
        raise RkitError(f"{file.parent} was written by a newer retrievalkit ({what} version "
                        f"{data['version']}): upgrade retrievalkit")
    return data
