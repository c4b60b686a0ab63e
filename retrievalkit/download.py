"""A small file downloader with a cache, a progress bar, atomic writes and a checksum.

Used for pretrained weights (e.g. torchvision's ImageNet state dicts) and benchmark data. A file
is downloaded once into the cache folder (``$RKIT_CACHE``, else ``~/.cache/retrievalkit``) and
reused afterwards. The bytes go to a temporary file that is renamed into place only when the
download is complete and its checksum matches, so an interrupted download never leaves a
half-written file that a later run would trust.

Checksums: ``sha256`` may be a full hex digest or a prefix of one. File names of the form
``name-<hex>.ext`` (torchvision's convention, e.g. ``alexnet-owt-7be5be79.pth``) carry such a
prefix; :func:`sha256_prefix_from_name` reads it, and ``sha256="auto"`` uses it.
"""

from __future__ import annotations

import hashlib
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from .atomic import atomic_path
from .cache import CACHE_ENV_VAR, cache_dir  # noqa: F401 (re-exported; defined once in cache.py)
from .errors import RkitError

_CHUNK = 1 << 20
_NAME_HASH = re.compile(r"-([0-9a-f]{6,64})\.[A-Za-z0-9]+$")


class DownloadError(RkitError):
    """A download that failed (network, HTTP status, checksum); the message says what to do."""


def sha256_prefix_from_name(filename: str) -> str | None:
    """The hex checksum prefix in ``name-<hex>.ext``, or ``None`` if the name carries none."""
    match = _NAME_HASH.search(filename)
    return match.group(1) if match else None


def file_sha256(path: str | Path) -> str:
    """Hex sha256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, *, filename: str | None = None, directory: str | Path | None = None,
             sha256: str | None = "auto", progress: bool = True, timeout: float = 30.0,
             hint: str = "") -> Path:
    """Download ``url`` into the cache (or ``directory``) unless it is there already.

    Args:
        url: what to fetch (http, https or file URL).
        filename: name to store it under; defaults to the last part of the URL path.
        directory: where to store it; defaults to :func:`cache_dir`.
        sha256: expected hex digest or prefix; ``"auto"`` takes it from the file name if the
            name carries one (see :func:`sha256_prefix_from_name`); ``None`` skips the check.
        progress: show a tqdm progress bar.
        timeout: seconds to wait for the server to answer.
        hint: what the user can do instead, appended to every error message.

    Returns:
        The path of the complete, verified file.

    Raises:
        DownloadError: network failure, HTTP error status or checksum mismatch.
    """
    name = filename or Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise DownloadError(f"cannot tell a file name from the URL {url!r}: pass filename=")
    target = Path(directory) if directory is not None else cache_dir()
    target = target / name
    expected = sha256_prefix_from_name(name) if sha256 == "auto" else sha256
    expected = expected.lower() if expected else None
    advice = f" {hint}" if hint else ""
    if target.is_file():
        if expected is None or file_sha256(target).startswith(expected):
            return target
        target.unlink()  # a stale or damaged copy: fetch it again

    try:
        response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (URLs come from plugins/users)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"downloading {url} failed: the server answered HTTP {exc.code} ({exc.reason}).{advice}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot download {url} ({reason}): no network connection or the host is unreachable.{advice}") from None

    digest = hashlib.sha256()
    with response, atomic_path(target) as tmp:
        total = int(response.headers.get("Content-Length") or 0) or None
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"download {name}",
                   disable=not progress, dynamic_ncols=True)
        try:
            with open(tmp, "wb") as out:
                while True:
                    try:
                        block = response.read(_CHUNK)
                    except OSError as exc:
                        raise DownloadError(f"the download of {url} broke off ({exc}).{advice}") from None
                    if not block:
                        break
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
        finally:
            bar.close()
        if total is not None and tmp.stat().st_size != total:
            raise DownloadError(f"the download of {url} is incomplete ({tmp.stat().st_size} of {total} bytes): try again.{advice}")
        actual = digest.hexdigest()
        if expected is not None and not actual.startswith(expected):
            raise DownloadError(
                f"the file downloaded from {url} is damaged or not the expected one (sha256 {actual[:12]}..., "
                f"expected {expected[:12]}...): try again.{advice}"
            )
    return target
