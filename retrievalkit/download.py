"""A file downloader: resumable, retried, verified, placed atomically, https by default.

Used for pretrained weights (torchvision's ImageNet state dicts, the authors' published networks)
and for the datasets of ``rkit data download`` (:mod:`retrievalkit.datafetch`).

* **Resume.** The bytes go to ``<target>.part``; a broken transfer is retried (``retries``
  times, waiting ``backoff``, 2 ``backoff``, 4 ``backoff`` ... seconds) and every retry, or a
  later run, asks the server for the rest only (HTTP ``Range``). A server that ignores ``Range``
  is read from the start again.
* **Verification.** ``sha256`` may be a full hex digest or a prefix. File names of the form
  ``name-<hex>.ext`` (torchvision's convention, e.g. ``alexnet-owt-7be5be79.pth``, and the
  authors' networks, ``...-gem-b80fb85.pth``) carry such a prefix; ``sha256="auto"`` uses it.
  A body shorter than the server's ``Content-Length``, or a chunked body cut short, is an
  incomplete download, never a file.
* **Atomic placement.** The ``.part`` file is renamed onto the target only once it is complete
  and verified, so no run ever trusts a half-written file.
* **Cache.** A file is reused when its digest matches, or, with no digest known, when the record
  ``.<name>.complete`` written at download time says it was complete (its Content-Length was
  checked) and size and sha256 still match. A file that had no checksum, no hash in its name and
  no Content-Length is kept but not recorded as complete: the next call downloads it again.
* **Policy.** ``https`` only: an ``http://`` URL is fetched as ``https://`` unless the caller
  opts in (``allow_http=True``, ``rkit data download --allow-http``, or ``RKIT_ALLOW_HTTP=1``),
  and a redirect from https to http is refused likewise. ``file://`` URLs only with
  ``allow_file=True``. Tests use ``http://127.0.0.1`` with the explicit opt-in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from .cache import CACHE_ENV_VAR, cache_dir  # noqa: F401 (re-exported; defined once in cache.py)
from .errors import RkitError

ALLOW_HTTP_ENV_VAR = "RKIT_ALLOW_HTTP"
_CHUNK = 1 << 20
_NAME_HASH = re.compile(r"-([0-9a-f]{6,64})\.[A-Za-z0-9]+$")
_USER_AGENT = "retrievalkit-downloader"


class DownloadError(RkitError):
    """A download that failed (network, HTTP status, checksum); the message says what to do."""


class _Transient(Exception):
    """A failure worth retrying (connection refused or dropped, 5xx, a body cut short)."""

    def __init__(self, message: str, body: bool = False, final: bool = False) -> None:
        super().__init__(message)
        self.body = body     # True: the server answered, but the body broke off
        self.final = final   # True: retrying cannot help (the host name does not resolve)


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


def http_allowed_by_environment() -> bool:
    """``RKIT_ALLOW_HTTP=1`` (or true/yes): the user's opt-in to plain http."""
    return os.environ.get(ALLOW_HTTP_ENV_VAR, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclasses.dataclass
class Transfer:
    """How to fetch: the scheme policy, retries and time-outs (module docstring)."""

    allow_http: bool | None = None        # None: RKIT_ALLOW_HTTP decides
    allow_file: bool = False
    retries: int = 3
    backoff: float = 1.0
    timeout: float = 30.0

    def effective_url(self, url: str) -> str:
        """``url`` as it will be fetched (http upgraded to https without the opt-in)."""
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme == "https":
            return url
        if scheme == "http":
            return url if self.http_ok else "https" + url[len("http"):]
        if scheme == "file":
            if not self.allow_file:
                raise DownloadError(f"{url} is a file:// URL, which is refused unless asked for: copy the file "
                                    f"in place yourself (rkit data download --from-dir DIR)")
            return url
        raise DownloadError(f"cannot download {url!r}: only https URLs (and http with --allow-http) are supported")

    @property
    def http_ok(self) -> bool:
        return http_allowed_by_environment() if self.allow_http is None else self.allow_http


@dataclasses.dataclass
class Fetched:
    """A complete file: where it is, its size and its sha256."""

    path: Path
    size: int
    sha256: str
    length_checked: bool


_NO_NAME = ("Name or service not known", "nodename nor servname", "Temporary failure in name resolution",
            "No address associated", "getaddrinfo failed")


def _open(url: str, transfer: Transfer, start: int, method: str = "GET"):
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers, method=method),
                                          timeout=transfer.timeout)  # noqa: S310 (scheme checked by Transfer)
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Transient(f"HTTP {exc.code} ({exc.reason})") from None
        if exc.code == 416 and start:
            raise _Transient("the server refused to resume (HTTP 416); starting again") from None
        raise DownloadError(f"downloading {url} failed: the server answered HTTP {exc.code} ({exc.reason})") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        no_name = isinstance(reason, socket.gaierror) or any(text in str(reason) for text in _NO_NAME)
        raise _Transient(str(reason), final=no_name) from None   # an unknown host stays unknown: no retry
    final_url = getattr(response, "url", url) or url
    if not transfer.http_ok and urllib.parse.urlsplit(final_url).scheme.lower() == "http":
        response.close()
        raise DownloadError(f"{url} redirects to {final_url}, which is not https: refused. Re-run with "
                            f"--allow-http (or RKIT_ALLOW_HTTP=1) to accept it")
    return response


def _resume_point(response, start: int) -> int:
    """Where the response body starts: ``start`` for a 206 that honours it, else 0."""
    if start and getattr(response, "status", 200) == 206:
        found = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
        if found and int(found.group(1)) == start:
            return start
    return 0


def _fetch_once(url: str, part: Path, transfer: Transfer, bar: tqdm, on_bytes: Callable[[int], None] | None) -> int | None:
    """One request, appending to ``part``; returns the expected total size (or None)."""
    start = part.stat().st_size if part.exists() else 0
    response = _open(url, transfer, start)
    with response:
        offset = _resume_point(response, start)
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        if offset == 0 and start:
            if on_bytes:
                on_bytes(-start)  # the server ignores Range: the kept bytes are read again
        bar.reset(total=total)
        bar.update(offset)
        with open(part, "ab" if offset else "wb") as out:
            while True:
                try:
                    block = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    partial = getattr(exc, "partial", b"")   # IncompleteRead: keep what did arrive
                    if isinstance(partial, bytes) and partial:
                        out.write(partial)
                    raise _Transient(f"the server closed the connection early ({type(exc).__name__}), "
                                     f"body incomplete", body=True) from None
                if not block:
                    break
                out.write(block)
                bar.update(len(block))
                if on_bytes:
                    on_bytes(len(block))
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Transient(f"the server sent {size} of {total} bytes", body=True)
    return total


def _record_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.complete")


def cached_copy(target: Path, expected: str | None) -> bool:
    """Whether ``target`` is a complete copy (module docstring, "Cache")."""
    if not target.is_file():
        return False
    if expected:
        return file_sha256(target).startswith(expected)
    record = _record_path(target)
    try:
        meta = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return meta.get("size") == target.stat().st_size and meta.get("sha256") == file_sha256(target)


def _verify(part: Path, url: str, expected: str | None) -> str:
    actual = file_sha256(part)
    if expected and not actual.startswith(expected):
        part.unlink()
        raise DownloadError(f"the file downloaded from {url} is damaged or not the expected one (sha256 "
                            f"{actual[:12]}..., expected {expected[:12]}...): try again")
    return actual


def fetch(url: str, target: str | Path, *, sha256: str | None = None, transfer: Transfer | None = None,
          progress: bool = True, on_bytes: Callable[[int], None] | None = None, position: int | None = None,
          hint: str = "", record: bool = True) -> Fetched:
    """Download ``url`` to ``target`` (resuming ``target.part``), verify it, rename it into place.

    ``record=False``: write no ``.<name>.complete`` record (the caller keeps its own, e.g. the
    dataset manifest).

    Raises:
        DownloadError: HTTP error status, a server that stays unreachable or keeps breaking off
            after the retries (the ``.part`` file is kept: re-running resumes), a checksum
            mismatch (nothing is kept). The message names the URL and ends with ``hint``.
    """
    transfer = transfer or Transfer()
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    advice = f" {hint}" if hint else ""
    real_url = transfer.effective_url(url)
    bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=target.name, disable=not progress,
               dynamic_ncols=True, position=position, leave=position is None)
    try:
        total = _fetch_with_retries(real_url, part, transfer, bar, on_bytes, advice)
    finally:
        bar.close()
    actual = _verify(part, real_url, sha256.lower() if sha256 else None)
    size = part.stat().st_size
    os.replace(part, target)
    marker = _record_path(target)
    if record and total is not None and not sha256:   # a digest verifies itself; a length needs the record
        marker.write_text(json.dumps({"url": url, "size": size, "sha256": actual}) + "\n", encoding="utf-8")
    elif marker.exists():
        marker.unlink()
    return Fetched(target, size, actual, total is not None)


def _fetch_with_retries(url: str, part: Path, transfer: Transfer, bar: tqdm,
                        on_bytes: Callable[[int], None] | None, advice: str) -> int | None:
    last, broke_off = "", False
    for attempt in range(transfer.retries + 1):
        if attempt:
            time.sleep(transfer.backoff * 2 ** (attempt - 1))
        try:
            return _fetch_once(url, part, transfer, bar, on_bytes)
        except DownloadError as exc:
            raise DownloadError(f"{exc}.{advice}" if advice else f"{exc}: check the URL") from None
        except _Transient as exc:
            last, broke_off = str(exc), broke_off or exc.body
            if exc.final:
                break
            if "HTTP 416" in last and part.exists():
                part.unlink()
    kept = part.stat().st_size if part.exists() else 0
    if kept or broke_off:
        raise DownloadError(
            f"the download of {url} is incomplete after {transfer.retries + 1} attempts ({last}); "
            f"{kept} bytes are kept in {part}: re-run the same command to resume.{advice}")
    scheme_note = (" If the server only speaks http, re-run with --allow-http (or RKIT_ALLOW_HTTP=1)."
                   if url.startswith("https://") and not transfer.http_ok else "")
    raise DownloadError(f"cannot download {url} ({last}): no network connection or the server is unreachable."
                        f"{advice} Check the connection and re-run, or download the file by other means and "
                        f"place it by hand.{scheme_note}")


def download(url: str, *, filename: str | None = None, directory: str | Path | None = None,
             sha256: str | None = "auto", progress: bool = True, timeout: float = 30.0,
             hint: str = "", transfer: Transfer | None = None) -> Path:
    """Download ``url`` into the cache (or ``directory``) unless a complete copy is there already.

    Args:
        url: what to fetch (https; http and file only as the ``transfer`` policy allows).
        filename: name to store it under; defaults to the last part of the URL path.
        directory: where to store it; defaults to :func:`cache_dir`.
        sha256: expected hex digest or prefix; ``"auto"`` takes it from the file name if the
            name carries one (see :func:`sha256_prefix_from_name`); ``None`` skips the check.
        progress: show a tqdm progress bar.
        timeout: seconds to wait for the server to answer.
        hint: what the user can do instead, appended to every error message.
        transfer: scheme policy and retries (default: https only, 3 retries).

    Returns:
        The path of the complete, verified file.
    """
    name = filename or Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise DownloadError(f"cannot tell a file name from the URL {url!r}: pass filename=")
    target = (Path(directory) if directory is not None else cache_dir()) / name
    expected = sha256_prefix_from_name(name) if sha256 == "auto" else sha256
    expected = expected.lower() if expected else None
    if cached_copy(target, expected):
        return target
    transfer = dataclasses.replace(transfer or Transfer(), timeout=timeout)
    fetched = fetch(url, target, sha256=expected, transfer=transfer, progress=progress, hint=hint)
    if expected is None and not fetched.length_checked:
        tqdm.write(f"Warning: {url} came with no checksum and no Content-Length, so it cannot be told "
                   f"complete; it is not cached as complete and will be fetched again next time.")
    return target


def probe_size(url: str, transfer: Transfer | None = None) -> int | None:
    """The size the server announces for ``url`` (HEAD), ``None`` if it says none.

    Raises:
        DownloadError: the server is unreachable or answers with an error status.
    """
    transfer = transfer or Transfer(retries=0, timeout=10.0)
    real_url = transfer.effective_url(url)
    try:
        response = _open(real_url, transfer, 0, method="HEAD")
    except _Transient as exc:
        raise DownloadError(f"server unreachable for {real_url} ({exc})") from None
    with response:
        length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None
