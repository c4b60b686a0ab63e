"""``rkit data download``: fetch catalog datasets (:mod:`retrievalkit.datasets_catalog`) and lay
them out under the data root so ``rkit eval --dataset``, ``--distractors``, ``rkit train --data``
and ``rkit whiten fit`` find them by name.

:func:`plan` lists what would be fetched (``--dry-run`` prints it, with sizes from ``HEAD`` where
the server answers); :func:`execute` fetches the missing files, ``jobs`` at a time, each resumable
and retried (:func:`retrievalkit.download.fetch`), verifies them against the manifest, extracts
archives safely (:func:`retrievalkit.archives.safe_extract`) and records each finished file.

The manifest ``ROOT/.rkit-manifest.json`` maps each URL to the size and sha256 of the file first
downloaded from it and whether it is in place. The authors publish no checksums: the first
download records them, every later download of the same URL (another machine sharing the
manifest, a re-download after deleting a folder) must match them, or it is refused.

Manually downloaded files (``--from-dir DIR``): a file in DIR with the published file name is
used instead of the network: verified against the manifest when it has an entry, extracted
straight from DIR (archives) or copied (other files); DIR is never modified.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from .archives import safe_extract
from .atomic import write_text_atomic
from .datasets_catalog import RemoteFile, lookup
from .download import DownloadError, Transfer, fetch, file_sha256, probe_size
from .errors import Interrupted, RkitError

DATA_ENV_VAR = "RKIT_DATA"
MANIFEST = ".rkit-manifest.json"
DOWNLOADS = ".downloads"


def data_root(root: str | Path | None) -> Path:
    """``root``, else ``$RKIT_DATA``; a clear error when neither is given."""
    if root is not None:
        return Path(root).expanduser()
    configured = os.environ.get(DATA_ENV_VAR)
    if configured:
        return Path(configured).expanduser()
    raise RkitError(f"no data root: give --root DIR or set {DATA_ENV_VAR}=DIR (where the datasets go)")


def mirrored(url: str, mirror: str | None) -> str:
    """``url`` on a mirror: ``https://host/path`` -> ``MIRROR/host/path`` (unchanged without one)."""
    if not mirror:
        return url
    parts = urllib.parse.urlsplit(url)
    return f"{mirror.rstrip('/')}/{parts.netloc}{parts.path}"


@dataclasses.dataclass
class PlannedFile:
    """One file of the plan: where it comes from and where it goes."""

    datasets: list[str]
    remote: RemoteFile
    url: str                  # after --mirror
    destination: Path         # the file, or the folder an archive is extracted into
    download_to: Path         # where the bytes land (archives: ROOT/.downloads/NAME)
    done: bool = False
    size: int | None = None


class Manifest:
    """``ROOT/.rkit-manifest.json``: per URL, size, sha256 and whether the file is in place."""

    def __init__(self, root: Path) -> None:
        self.path = root / MANIFEST
        self.lock = threading.Lock()
        try:
            self.entries: dict[str, dict] = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self.entries = {}
        except ValueError as exc:
            raise RkitError(f"{self.path} is damaged ({exc}): delete it (the next download records "
                            f"sizes and checksums again)") from None

    def get(self, key: str) -> dict:
        with self.lock:
            return dict(self.entries.get(key, {}))

    def update(self, key: str, **values: object) -> None:
        with self.lock:
            self.entries[key] = {**self.entries.get(key, {}), **values}
            write_text_atomic(self.path, json.dumps(self.entries, indent=1, sort_keys=True) + "\n")


def plan(names: Sequence[str], root: Path, *, mirror: str | None = None) -> list[PlannedFile]:
    """The files of datasets ``names`` under ``root`` (shared files once), marked done if in place."""
    manifest = Manifest(root)
    planned: dict[str, PlannedFile] = {}
    for name in names:
        entry = lookup(name)
        for remote in entry.files:
            if remote.url in planned:
                planned[remote.url].datasets.append(entry.name)
                continue
            destination = root / remote.path
            download_to = root / DOWNLOADS / remote.name if remote.archive else destination
            record = manifest.get(remote.url)
            done = bool(record.get("in_place")) and destination.exists()
            planned[remote.url] = PlannedFile([entry.name], remote, mirrored(remote.url, mirror), destination,
                                              download_to, done, record.get("size"))
    return list(planned.values())


def probe(files: Sequence[PlannedFile], transfer: Transfer) -> dict[str, str]:
    """Ask each server for the sizes (HEAD); returns host -> reason for hosts that did not answer."""
    failed: dict[str, str] = {}
    for item in files:
        host = urllib.parse.urlsplit(item.url).netloc
        if item.size is not None or host in failed:
            continue
        try:
            item.size = probe_size(item.url, dataclasses.replace(transfer, retries=0, timeout=min(transfer.timeout, 10)))
        except DownloadError as exc:
            failed[host] = str(exc)
    return failed


def _check_against_manifest(item: PlannedFile, path: Path, manifest: Manifest) -> tuple[int, str]:
    """Size and sha256 of ``path``; refuse (and delete a downloaded copy) if the manifest disagrees."""
    size, digest = path.stat().st_size, file_sha256(path)
    known = manifest.get(item.remote.url)
    expected = known.get("sha256") or item.remote.sha256
    if expected and not digest.startswith(expected):
        if path == item.download_to:
            path.unlink()
        raise DownloadError(
            f"checksum error: {path.name} from {item.url} has sha256 {digest[:12]}... and {size} bytes, but the "
            f"manifest {manifest.path} recorded {expected[:12]}... ({known.get('size')} bytes) at its first "
            f"download. The file is damaged or was changed on the server; nothing was extracted. Download it "
            f"again, or delete its entry from the manifest if the new file is the right one")
    return size, digest


def _obtain(item: PlannedFile, manifest: Manifest, transfer: Transfer, from_dir: Path | None, progress: bool,
            position: int | None, on_bytes: Callable[[int], None] | None) -> Path:
    """The bytes of ``item``: a file in ``from_dir`` if there is one, else downloaded."""
    if from_dir is not None and (from_dir / item.remote.name).is_file():
        local = from_dir / item.remote.name
        if not item.remote.archive:
            item.download_to.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, item.download_to)
            return item.download_to
        return local
    expected = manifest.get(item.remote.url).get("sha256") or item.remote.sha256
    hint = (f"Or download {item.remote.url} by other means and re-run with --from-dir DIR "
            f"(the folder holding {item.remote.name}).")
    fetched = fetch(item.url, item.download_to, transfer=transfer, progress=progress, on_bytes=on_bytes,
                    position=position, hint=hint, record=False)   # verified against the manifest by the caller
    if not fetched.length_checked and not expected:
        tqdm.write(f"Warning: {item.url} came with no Content-Length and no checksum is known: its size and "
                   f"sha256 are recorded now, but completeness could not be checked this time.")
    return item.download_to


def place(item: PlannedFile, manifest: Manifest, transfer: Transfer, *, from_dir: Path | None = None,
          keep_archives: bool = False, progress: bool = True, position: int | None = None,
          on_bytes: Callable[[int], None] | None = None) -> None:
    """Fetch (or take from ``from_dir``), verify, extract and record one planned file."""
    path = _obtain(item, manifest, transfer, from_dir, progress, position, on_bytes)
    size, digest = _check_against_manifest(item, path, manifest)
    manifest.update(item.remote.url, file=item.remote.name, size=size, sha256=digest, in_place=False)
    if item.remote.archive:
        count = safe_extract(path, item.destination, flatten=item.remote.flatten)
        manifest.update(item.remote.url, files=count)
        if path == item.download_to and not keep_archives:
            path.unlink()
    manifest.update(item.remote.url, in_place=True)
    item.done = True


class _Cancelled(Exception):
    """Raised in a download thread once the user interrupted the command."""


def execute(files: Sequence[PlannedFile], root: Path, transfer: Transfer, *, jobs: int = 4,
            from_dir: Path | None = None, keep_archives: bool = False, progress: bool = True,
            resume: str = "the same rkit data download command") -> list[str]:
    """Place every file not done yet, ``jobs`` at a time; returns the error messages (empty: all done).

    Ctrl-C / SIGTERM stops every transfer after its current block (the ``.part`` files stay, an
    extraction under way finishes) and raises :class:`retrievalkit.errors.Interrupted`.
    """
    manifest = Manifest(root)
    todo = [item for item in files if not item.done]
    overall = tqdm(total=sum(item.size or 0 for item in todo) or None, unit="B", unit_scale=True,
                   unit_divisor=1024, desc=f"{len(todo)} files", disable=not progress, position=0, dynamic_ncols=True)
    lock, stop = threading.Lock(), threading.Event()
    slots = list(range(max(1, jobs), 0, -1))
    errors: list[str] = []

    def advance(count: int) -> None:
        if stop.is_set():
            raise _Cancelled()
        with lock:
            overall.update(count)

    def run(item: PlannedFile) -> None:
        if stop.is_set():
            return
        with lock:
            slot = slots.pop()
        try:
            place(item, manifest, transfer, from_dir=from_dir, keep_archives=keep_archives, progress=progress,
                  position=slot if progress else None, on_bytes=advance)
        except RkitError as exc:
            with lock:
                errors.append(f"{item.remote.name}: {exc}")
        except _Cancelled:
            pass
        finally:
            with lock:
                slots.append(slot)

    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        for future in [pool.submit(run, item) for item in todo]:
            future.result()
    except KeyboardInterrupt:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        placed = sum(1 for item in files if item.done)
        raise Interrupted(kept=f"{placed} of {len(files)} files in place under {root}; partial downloads are kept "
                               f"as *.part files (each resumes where it stopped)", resume=resume) from None
    finally:
        pool.shutdown(wait=True)
        overall.close()
    return errors


#: what finds each kind of dataset once it is in place
USAGE = {
    "benchmark": "rkit eval --dataset {name} --data-root {root}",
    "distractors": "rkit eval --dataset roxford5k --distractors {name} --data-root {root}",
    "training": "RKIT_DATA={root} rkit train --data {name}",
}


def layout_lines(names: Sequence[str], root: Path) -> list[str]:
    """Human-readable target layout and the commands that use each dataset."""
    lines = []
    for name in names:
        entry = lookup(name)
        lines.append(f"{entry.name}: {entry.description}  [{entry.reference}]")
        lines += [f"  {root / p}" for p in entry.expects]
        lines.append(f"  use: {USAGE[entry.kind].format(name=entry.name, root=root)}")
    return lines


def finish(names: Sequence[str], root: Path) -> list[str]:
    """After the files are in place: derived files, and what is still missing (empty: complete)."""
    from .dbpkl import write_whitening_lists

    missing: list[str] = []
    for name in names:
        entry = lookup(name)
        missing += [f"{name}: {root / p}" for p in entry.expects if not (root / p).exists()]
        if entry.kind == "training":
            for remote in entry.files:
                if remote.path.endswith("-whiten.pkl") and (root / remote.path).is_file():
                    write_whitening_lists(root / remote.path, images_root=root / "retrieval-sfm-120k")
    return missing


def resolve_training_data(data: str | None, images_root: str | None) -> tuple[str | None, str | None]:
    """``rkit train --data``: a path stays as it is; a catalog name (``retrieval-sfm-30k``) becomes its
    database file and images folder under the data root (``$RKIT_DATA``)."""
    from .datasets_catalog import TRAINING_LAYOUT

    if data is None or Path(data).exists():
        return data, images_root
    key = str(data).strip().lower()
    if key not in TRAINING_LAYOUT:
        raise RkitError(f"--data {data}: no such file or folder, and not a training set name "
                        f"({', '.join(TRAINING_LAYOUT)}). Give an `rkit sfm` folder, a db.pkl, or a name")
    root = data_root(None) if os.environ.get(DATA_ENV_VAR) else None
    if root is None:
        raise RkitError(f"--data {data} names a dataset: set {DATA_ENV_VAR}=DIR to the folder you downloaded "
                        f"it into (rkit data download {key} --root DIR)")
    candidates, images = TRAINING_LAYOUT[key]
    for candidate in candidates:
        if (root / candidate).is_file():
            return str(root / candidate), images_root or str(root / images)
    raise RkitError(f"{key} is not in {root} (looked for {', '.join(candidates)}): run "
                    f"`rkit data download {key} --root {root}`")
