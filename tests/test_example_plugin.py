"""The third-party example ``plugins/rkit-crow``: pip-installed, found through real entry points.

The package is installed with pip (no dependencies, no build isolation: offline and fast) into a
temporary ``--target`` folder that is put on ``sys.path``; ``importlib.metadata`` then sees its
``.dist-info`` exactly as it sees any installed distribution, and the core, which is not changed,
finds the ``crow`` pooling after ``reset_host()``.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrievalkit.cli import main
from retrievalkit.descriptors import DescriptorSet
from retrievalkit.plugins import get_host, reset_host

PLUGIN_SOURCE = Path(__file__).resolve().parents[1] / "plugins" / "rkit-crow"


@pytest.fixture(scope="module")
def crow_site(tmp_path_factory) -> Path:
    """A folder holding the pip-installed rkit-crow (built from a copy, so the repo stays clean)."""
    work = tmp_path_factory.mktemp("crow")
    source = work / "src"
    shutil.copytree(PLUGIN_SOURCE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = work / "site"
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
               "--no-index", "--disable-pip-version-check", "--target", str(site), str(source)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"pip install of rkit-crow failed:\n{done.stdout}\n{done.stderr}")
    return site


@pytest.fixture
def crow_installed(crow_site, monkeypatch):
    monkeypatch.syspath_prepend(str(crow_site))
    reset_host()
    yield
    for name in [m for m in sys.modules if m == "rkit_crow" or m.startswith("rkit_crow.")]:
        del sys.modules[name]
    reset_host()


def test_the_core_finds_crow_through_its_entry_point(crow_installed) -> None:
    host = get_host()
    registered = host.get("pooling", "crow")
    assert registered.distribution == "rkit-crow" and registered.version == "0.1.0"
    assert {"mac", "spoc", "gem", "crow"} <= set(host.names("pooling"))


def test_crow_pooling_by_hand(crow_installed) -> None:
    crow = get_host().build("pooling", "crow")
    # K = 2 channels on a 1 x 2 map
    x = torch.tensor([[[[3.0, 0.0]], [[1.0, 0.0]]]])
    # S = (4, 0) -> alpha = sqrt(S / ||S||) = (1, 0); Q = (1/2, 1/2) -> beta = log(1 / (1/2)) = log 2
    assert crow(x)[0].tolist() == pytest.approx([3 * math.log(2), 1 * math.log(2)], rel=1e-5)
    y = torch.tensor([[[[1.0, 1.0]], [[2.0, 0.0]]]])
    # S = (3, 1): alpha = sqrt((3, 1) / sqrt 10); Q = (1, 1/2): beta = (log 1.5, log 3)
    alpha = [math.sqrt(3 / math.sqrt(10)), math.sqrt(1 / math.sqrt(10))]
    expected = [math.log(1.5) * (alpha[0] + alpha[1]), math.log(3.0) * 2 * alpha[0]]
    assert crow(y)[0].tolist() == pytest.approx(expected, rel=1e-5)


def test_rkit_extract_with_the_crow_pooling(crow_installed, tmp_path, capsys) -> None:
    rng = np.random.default_rng(1)
    (tmp_path / "imgs").mkdir()  # the output may not lie inside the input folder
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(tmp_path / "imgs" / name)
    out = tmp_path / "crow.npz"
    try:
        main(["extract", str(tmp_path / "imgs"), "--pooling", "crow", "--weights", "none", "--image-size", "64",
              "--workers", "0", "--device", "cpu", "--no-progress", "--out", str(out)])
    except SystemExit as exit_:
        pytest.fail(f"rkit extract exited with {exit_.code}: {capsys.readouterr().err}")
    data = DescriptorSet.load(out)
    assert data.paths == ["a.png", "b.png"] and data.descriptors.shape == (2, 1280)
    assert data.meta["model"]["pooling"] == "crow"
    np.testing.assert_allclose(np.linalg.norm(data.descriptors, axis=1), 1.0, atol=1e-5)
