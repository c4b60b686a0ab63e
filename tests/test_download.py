"""The downloader against a local http.server on 127.0.0.1 (no network)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import threading
from pathlib import Path

import pytest
import torch

from retrievalkit.download import DownloadError, Transfer, cache_dir, download, sha256_prefix_from_name
from retrievalkit.weights import load_backbone_weights


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path):
    """Serve ``tmp_path / "www"`` on 127.0.0.1; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def allow_http_to_loopback(monkeypatch):
    """The test server speaks plain http: opt in, as a user would with --allow-http."""
    monkeypatch.setenv("RKIT_ALLOW_HTTP", "1")


def _state_dict_bytes() -> tuple[dict[str, torch.Tensor], bytes]:
    state = {"weight": torch.arange(6, dtype=torch.float32).view(2, 3), "bias": torch.tensor([0.5, -0.5])}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return state, buffer.getvalue()


def _publish(www: Path, stem: str, data: bytes) -> str:
    """Store ``data`` as ``stem-<sha256 prefix>.pth`` (torchvision's naming) and return the name."""
    name = f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    (www / name).write_bytes(data)
    return name


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RKIT_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("RKIT_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "retrievalkit"


def test_sha256_prefix_from_torchvision_style_names() -> None:
    assert sha256_prefix_from_name("alexnet-owt-7be5be79.pth") == "7be5be79"
    assert sha256_prefix_from_name("resnet50-0676ba61.pth") == "0676ba61"
    assert sha256_prefix_from_name("weights.pth") is None


def test_download_verifies_caches_and_loads(server, tmp_path, monkeypatch) -> None:
    www, base = server
    monkeypatch.setenv("RKIT_CACHE", str(tmp_path / "cache"))
    state, data = _state_dict_bytes()
    name = _publish(www, "tiny", data)
    path = download(f"{base}/{name}", progress=False)
    assert path == tmp_path / "cache" / name and path.read_bytes() == data
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temporary file left behind
    (www / name).unlink()  # the second call must not need the server
    assert download(f"{base}/{name}", progress=False) == path

    module = torch.nn.Linear(3, 2)
    load_backbone_weights(module, "imagenet", imagenet_url=f"{base}/{name}")
    torch.testing.assert_close(module.weight, state["weight"])
    torch.testing.assert_close(module.bias, state["bias"])


def test_checksum_mismatch_keeps_nothing(server, tmp_path) -> None:
    www, base = server
    _, data = _state_dict_bytes()
    (www / "tiny-deadbeef.pth").write_bytes(data)  # the name promises another file
    with pytest.raises(DownloadError, match="damaged or not the expected one"):
        download(f"{base}/tiny-deadbeef.pth", directory=tmp_path / "out", progress=False)
    assert list((tmp_path / "out").iterdir()) == []
    # an explicit digest works too, and sha256=None skips the check
    good = download(f"{base}/tiny-deadbeef.pth", directory=tmp_path / "out", progress=False, sha256=None)
    assert good.read_bytes() == data


def test_http_404_is_a_clear_error_with_the_hint(server, tmp_path) -> None:
    _, base = server
    with pytest.raises(DownloadError) as info:
        download(f"{base}/missing-12345678.pth", directory=tmp_path, progress=False, hint="Use --weights none.")
    assert "HTTP 404" in str(info.value) and str(info.value).endswith("Use --weights none.")
    assert not (tmp_path / "missing-12345678.pth").exists()


def test_unreachable_host_is_a_clear_error(tmp_path) -> None:
    # port 9 on 127.0.0.1 (discard) has no HTTP server: the connection is refused
    with pytest.raises(DownloadError, match="cannot download .* unreachable. Try PATH"):
        download("http://127.0.0.1:9/x-12345678.pth", directory=tmp_path, progress=False, hint="Try PATH.",
                 timeout=5, transfer=Transfer(retries=0))


# -- resume, retries, incomplete bodies, scheme policy (issue 10) -------------------------------------
from _http_fixture import Server  # noqa: E402

from retrievalkit.download import fetch  # noqa: E402

QUICK = Transfer(retries=2, backoff=0.0, timeout=5)


@pytest.fixture
def misbehaving(tmp_path):
    www = tmp_path / "srv"
    www.mkdir()
    (www / "big.bin").write_bytes(bytes(range(256)) * 2000)      # 512,000 bytes
    with Server(www) as server:
        yield server, (www / "big.bin").read_bytes()


def test_dropped_connection_is_resumed_with_range(misbehaving, tmp_path):
    server, data = misbehaving
    server.handler.drop_once.add("/big.bin")
    got = fetch(f"{server.base}/big.bin", tmp_path / "big.bin", transfer=QUICK, progress=False)
    assert got.path.read_bytes() == data and got.length_checked
    ranges = [rng for method, path, rng in server.log if method == "GET"]
    assert ranges[0] is None and ranges[1] == f"bytes={len(data) // 2}-"   # only the rest was asked for
    assert not (tmp_path / "big.bin.part").exists()


def test_interrupted_download_resumes_on_the_next_run(misbehaving, tmp_path):
    server, data = misbehaving
    server.handler.drop_once.add("/big.bin")
    with pytest.raises(DownloadError, match=r"incomplete .* bytes are kept in .*big.bin.part: re-run"):
        fetch(f"{server.base}/big.bin", tmp_path / "big.bin", transfer=Transfer(retries=0), progress=False)
    assert (tmp_path / "big.bin.part").stat().st_size == len(data) // 2 and not (tmp_path / "big.bin").exists()
    fetch(f"{server.base}/big.bin", tmp_path / "big.bin", transfer=QUICK, progress=False)
    assert (tmp_path / "big.bin").read_bytes() == data


def test_short_chunked_body_is_an_incomplete_download(misbehaving, tmp_path):
    server, _ = misbehaving
    server.handler.chunked_short.add("/big.bin")
    with pytest.raises(DownloadError) as info:
        download(f"{server.base}/big.bin", directory=tmp_path, sha256=None, progress=False, transfer=QUICK)
    message = str(info.value)
    assert "incomplete" in message and f"{server.base}/big.bin" in message and "re-run" in message
    assert not (tmp_path / "big.bin").exists()


def test_no_checksum_and_no_length_is_not_cached_as_complete(misbehaving, tmp_path):
    server, data = misbehaving
    server.handler.no_length.add("/big.bin")
    path = download(f"{server.base}/big.bin", directory=tmp_path, sha256=None, progress=False)
    assert path.read_bytes() == data
    download(f"{server.base}/big.bin", directory=tmp_path, sha256=None, progress=False)
    assert sum(1 for m, p, _ in server.log if m == "GET") == 2            # fetched again: never trusted
    server.handler.no_length.discard("/big.bin")                            # with a Content-Length it is
    download(f"{server.base}/big.bin", directory=tmp_path, sha256=None, progress=False)
    download(f"{server.base}/big.bin", directory=tmp_path, sha256=None, progress=False)
    assert sum(1 for m, p, _ in server.log if m == "GET") == 3


def test_https_only_unless_asked(misbehaving, tmp_path, monkeypatch):
    server, _ = misbehaving
    monkeypatch.delenv("RKIT_ALLOW_HTTP")
    with pytest.raises(DownloadError, match="--allow-http"):
        fetch(f"{server.base}/big.bin", tmp_path / "x", transfer=Transfer(retries=0, timeout=5), progress=False)
    assert not [m for m, *_ in server.log if m == "GET"]                    # no plain-http request was made
    fetch(f"{server.base}/big.bin", tmp_path / "x", transfer=Transfer(allow_http=True), progress=False)
    source = tmp_path / "local.bin"
    source.write_bytes(b"abc")
    with pytest.raises(DownloadError, match="file:// URL, which is refused unless asked"):
        fetch(source.as_uri(), tmp_path / "y", progress=False)
    assert fetch(source.as_uri(), tmp_path / "y", transfer=Transfer(allow_file=True), progress=False).size == 3


def test_redirect_from_https_to_http_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("RKIT_ALLOW_HTTP")

    class Redirected(io.BytesIO):
        url = "http://mirror.example/x.bin"     # where urllib ended up after following a redirect
        status = 200
        headers = {"Content-Length": "3"}

    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: Redirected(b"abc"))
    with pytest.raises(DownloadError, match="redirects to http://mirror.example/x.bin, which is not https"):
        fetch("https://example.org/x.bin", tmp_path / "x.bin", transfer=Transfer(retries=0), progress=False)
    assert not (tmp_path / "x.bin").exists()
