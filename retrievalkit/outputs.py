"""Output-path guard: no command overwrites its own inputs or deletes a folder it did not make.

Two rules, one mechanism for every command:

1. :func:`check_output_path` refuses an output path that *is* one of the command's inputs, or
   that lies inside an input folder the command reads (``rkit extract imgs --out imgs/a.npz``
   would add the descriptors file to the very folder it lists), or, for an output folder, one
   that contains an input.
2. A folder output (``rkit data synth --out``, ``rkit ablate --out`` ...) is marked with a small
   file, :data:`MARKER_NAME`, naming the command that wrote it (:func:`write_output_marker`).
   :func:`check_replaceable` lets ``--overwrite`` replace only a folder carrying the marker of
   the same command; never a folder the toolkit did not create, the current folder or one of
   its parents, the home folder or the file-system root.

Both raise :class:`retrievalkit.errors.OutputPathError` (a :class:`RkitError`: the CLI prints
``Error: ...`` and exits 2). Paths are compared after resolving symbolic links.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import OutputPathError

#: file in a folder output naming the command that created it
MARKER_NAME = ".rkit-output.json"

PathLike = str | os.PathLike[str]


def _resolved(path: PathLike) -> Path:
    return Path(path).expanduser().resolve(strict=False)


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_path(out: PathLike, inputs: Iterable[PathLike | None] = (), *,
                      option: str = "--out", folder: bool = False) -> Path:
    """Return ``out`` if writing it cannot destroy or alter an input; else raise OutputPathError.

    ``inputs`` are the files and folders the command reads (None entries are ignored, so
    optional inputs can be passed as they are). Refused: ``out`` equal to an input; ``out``
    inside an input folder; with ``folder=True`` (``out`` is a folder the command fills or
    replaces) an input inside ``out``. ``option`` names the flag in the message.
    """
    target = _resolved(out)
    for given in inputs:
        if given is None:
            continue
        source = _resolved(given)
        if target == source:
            raise OutputPathError(f"{option} {out} is also an input of this command; writing it would "
                                  "destroy the input. Choose another output path.")
        if source.is_dir() and _is_within(target, source):
            raise OutputPathError(f"{option} {out} lies inside the input folder {given}, which this "
                                  "command reads; writing there would change the input. Choose an "
                                  "output path outside it.")
        if folder and _is_within(source, target):
            raise OutputPathError(f"{option} {out} contains the input {given}; writing the output "
                                  "folder could overwrite or delete it. Choose another output folder.")
    return Path(out)


def write_output_marker(folder: PathLike, command: str) -> Path:
    """Mark ``folder`` as the output of ``command`` (e.g. "data synth"); return the marker path."""
    from .atomic import write_text_atomic

    marker = Path(folder) / MARKER_NAME
    write_text_atomic(marker, json.dumps({"command": command, "tool": "retrievalkit"}) + "\n")
    return marker


def output_marker(folder: PathLike) -> str | None:
    """The command recorded in ``folder``'s marker, or None (no marker, or not readable)."""
    try:
        data = json.loads((Path(folder) / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("command") if isinstance(data, dict) and isinstance(data.get("command"), str) else None


def _protected_reason(target: Path) -> str | None:
    if _is_within(Path.cwd().resolve(), target):
        return "is the current folder or one of its parents"
    if target == Path.home().resolve():
        return "is your home folder"
    if target == Path(target.anchor):
        return "is the root of the file system"
    return None


def check_replaceable(folder: PathLike, command: str, *, overwrite: bool, option: str = "--out",
                      recognise: Callable[[Path], bool] | None = None) -> bool:
    """Decide whether the existing ``folder`` may be replaced by a new output of ``command``.

    Returns False when there is nothing to replace (``folder`` missing or an empty folder) and
    True when ``overwrite`` is set and ``folder`` is a previous output of the same command (it
    carries the marker). Raises OutputPathError otherwise, saying why and what to do: the
    folder exists and ``overwrite`` is off; or it was not made by ``rkit {command}``; or it is
    the current folder, one of its parents, the home folder or the root (never replaced).
    ``recognise`` also accepts a folder it returns True for as a previous output (one written
    before markers existed, or a format with a manifest of its own).
    """
    path = Path(folder)
    if not path.exists() and not path.is_symlink():
        return False
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        return False
    reason = _protected_reason(_resolved(path))
    if reason:
        raise OutputPathError(f"{option} {folder} {reason}; rkit never replaces it. "
                              "Give a new folder for the output.")
    if not overwrite:
        raise OutputPathError(f"{option} {folder} already exists and is not empty. Choose another "
                              f"folder, delete it, or pass --overwrite to replace a previous "
                              f"output of `rkit {command}`.")
    found = output_marker(path) if path.is_dir() and not path.is_symlink() else None
    if found is None and recognise is not None and path.is_dir() and recognise(path):
        found = command
    if found != command:
        made_by = f"made by `rkit {found}`" if found else "not made by rkit"
        raise OutputPathError(f"{option} {folder} was {made_by} (it has no `rkit {command}` marker "
                              f"{MARKER_NAME}); --overwrite only replaces a previous output of "
                              f"`rkit {command}`. Delete it yourself or choose another folder.")
    return True
