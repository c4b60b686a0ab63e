"""Safe extraction of downloaded ``tar`` / ``tar.gz`` archives.

An archive from the network is data, not instructions: before anything is written, every entry
is checked, and the archive is refused (nothing extracted) if one entry

* has an absolute name (``/etc/passwd``) or a ``..`` component (``../../x``),
* is a symbolic or hard link whose target leaves the destination folder,
* is a device, FIFO or other special file.

The entries are then extracted into a temporary folder beside the destination (same file
system) with Python's ``data`` filter as a second guard, and only when the whole archive was read
without error are its files moved into the destination. A damaged archive (bad gzip CRC,
truncated tar) therefore leaves the destination as it was. ``flatten=True`` keeps the files
only, without their folders (the Oxford / Paris Buildings archives).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from .errors import RkitError


class ArchiveError(RkitError):
    """An archive that is damaged or holds entries that would escape the destination."""


def _leaves(base: PurePosixPath, name: str) -> bool:
    """Whether ``base / name`` (normalised lexically) lies outside ``base``'s root."""
    depth = len(base.parts)
    for part in PurePosixPath(name).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Raise :class:`ArchiveError` if ``member`` is unsafe (module docstring)."""
    name = member.name
    what = f"{archive.name} holds the entry {name!r}"
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"{what}, an absolute path: refused, nothing was extracted. The archive is not "
                           f"the published one; delete it and download again")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise ArchiveError(f"{what}, which climbs out of the destination with '..': refused, nothing was "
                           f"extracted. Delete the archive and download it again")
    if member.issym() or member.islnk():
        parent = PurePosixPath(name).parent if member.issym() else PurePosixPath()
        if member.linkname.startswith("/") or _leaves(parent, member.linkname):
            raise ArchiveError(f"{what}, a link to {member.linkname!r} outside the destination: refused, "
                               f"nothing was extracted")
    elif not (member.isfile() or member.isdir()):
        raise ArchiveError(f"{what}, a device or special file: refused, nothing was extracted")


def _read_members(archive: Path) -> tuple[tarfile.TarFile, list[tarfile.TarInfo]]:
    try:
        tar = tarfile.open(archive, "r:*")
        return tar, tar.getmembers()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise ArchiveError(f"{archive} is damaged or not a tar archive ({type(exc).__name__}: {exc}): delete "
                           f"it and download again; nothing was extracted") from None


def _move_tree(source: Path, destination: Path, flatten: bool) -> int:
    """Move the files of ``source`` into ``destination``; returns how many."""
    moved = 0
    for path in sorted(source.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        relative = Path(path.name) if flatten else path.relative_to(source)
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        moved += 1
    return moved


def safe_extract(archive: str | Path, destination: str | Path, *, flatten: bool = False) -> int:
    """Extract ``archive`` into ``destination`` (created if needed); returns the number of files.

    Raises:
        ArchiveError: an unsafe entry (nothing extracted) or a damaged archive (nothing moved
            into ``destination``).
    """
    archive, destination = Path(archive), Path(destination)
    tar, members = _read_members(archive)
    with tar:
        for member in members:
            check_member(member, archive)
        if flatten:
            members = [m for m in members if m.isfile()]
        destination.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{destination.name}.extract-", dir=destination.parent))
        try:
            try:
                tar.extractall(scratch, members=members, filter="data")
            except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
                raise ArchiveError(f"{archive} is damaged ({type(exc).__name__}: {exc}): delete it and download "
                                   f"again; nothing was extracted into {destination}") from None
            return _move_tree(scratch, destination, flatten)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
