"""A local HTTP server on 127.0.0.1 for the download tests: serves a folder, honours Range, and can
misbehave on request (drop a connection halfway, cut a chunked body short)."""

from __future__ import annotations

import http.server
import io
import random
import tarfile
import threading
from pathlib import Path

from PIL import Image


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root: Path
    log: list
    drop_once: set          # paths whose first GET stops after half the body
    chunked_short: set      # paths served chunked and cut short, every time
    no_length: set          # paths served without Content-Length (body ends when the connection closes)

    def log_message(self, *args) -> None:
        pass

    def _file(self) -> Path | None:
        path = self.root / self.path.split("?")[0].lstrip("/")
        return path if path.is_file() else None

    def do_HEAD(self) -> None:
        self.log.append(("HEAD", self.path, None))
        path = self._file()
        self.send_response(200 if path else 404)
        self.send_header("Content-Length", str(path.stat().st_size if path else 0))
        self.end_headers()

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        self.log.append(("GET", self.path, rng))
        path = self._file()
        if path is None:
            self.send_error(404, "File not found")
            return
        data = path.read_bytes()
        if self.path in self.chunked_short:
            return self._chunked_short(data)
        if self.path in self.no_length:
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True
            return
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if self.path in self.drop_once:
            self.drop_once.discard(self.path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _chunked_short(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        half = data[: len(data) // 2]
        self.wfile.write(f"{len(half):x}\r\n".encode() + half + b"\r\n")
        self.wfile.write(f"{len(data):x}\r\n".encode() + data[:10])   # announces more, then hangs up
        self.wfile.flush()
        self.close_connection = True


class Server:
    """``with Server(folder) as s:`` -> ``s.base`` is ``http://127.0.0.1:PORT``."""

    def __init__(self, root: Path) -> None:
        handler = type("H", (Handler,), {"root": Path(root), "log": [], "drop_once": set(), "chunked_short": set(),
                                         "no_length": set()})
        self.handler = handler
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "Server":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def log(self) -> list:
        return self.handler.log


def jpeg_bytes(seed: int, size: tuple[int, int] = (80, 64)) -> bytes:
    rnd = random.Random(seed)
    image = Image.new("RGB", size, tuple(rnd.randrange(256) for _ in range(3)))
    for _ in range(6):
        x, y = rnd.randrange(size[0] - 10), rnd.randrange(size[1] - 10)
        image.paste(tuple(rnd.randrange(256) for _ in range(3)), (x, y, x + 10, y + 10))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_tar(path: Path, entries: dict[str, bytes], *, links: dict[str, str] | None = None) -> Path:
    """A ``.tar.gz`` with ``entries`` (name -> bytes) and symbolic ``links`` (name -> target)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path
