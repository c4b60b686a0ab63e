"""Shared fixtures: fake installed distributions, tiny images, the landmarks folder."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from retrievalkit.plugins import reset_host

LANDMARKS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "landmarks"


@pytest.fixture
def landmarks_dir() -> Path:
    """The real photos in ../shared/data/landmarks; the test is skipped where they are absent."""
    if not LANDMARKS.is_dir():
        pytest.skip(f"landmark photos not found at {LANDMARKS} (../shared beside the repository)")
    return LANDMARKS


@pytest.fixture
def fresh_host():
    """Forget the cached plugin host before and after a test that changes what is installed."""
    reset_host()
    yield
    reset_host()


@pytest.fixture
def install_fake_plugin(tmp_path, monkeypatch, fresh_host):
    """Install a one-module distribution with a ``retrievalkit`` entry point onto sys.path.

    It is a real installed distribution as far as ``importlib.metadata`` is concerned (a
    ``.dist-info`` folder with ``entry_points.txt``), so the host finds it exactly as it finds
    a pip-installed third-party plugin.
    """

    def install(dist: str, entry_point: str, module: str, source: str) -> Path:
        site = tmp_path / f"site-{dist}"
        info = site / f"{dist}-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[retrievalkit]\n{entry_point} = {module}\n")
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(site))
        return site

    return install
