"""Open a report in a real headless browser (Debian's chromium) and read the rendered page.

The page's own script marks each ``img`` with ``data-loaded`` once the browser has decoded it
(``complete && naturalWidth > 0``) and sorts the query table worst-AP-first; ``--dump-dom``
gives the DOM after scripts ran, so this checks what a user would see. Skipped when chromium is
not installed (CI installs it: ``apt-get install -y chromium``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrievalkit.evaluate import evaluate_folder_collection, folder_labels, rankings_document
from retrievalkit.report import write_evaluation_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def _browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no headless chromium found: install it with `apt-get install -y chromium`")


def _render(browser: str, page: Path, profile: Path, extra: list[str] | None = None) -> str:
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
            f"--user-data-dir={profile}", "--virtual-time-budget=5000", *(extra or ["--dump-dom"]),
            page.resolve().as_uri()]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture
def report_page(tmp_path) -> tuple[Path, dict]:
    paths = [f"{c}/{i}.jpg" for c in "abc" for i in range(3)]
    rng = np.random.default_rng(3)
    for p in paths:
        (tmp_path / "imgs" / p).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, size=(30, 40, 3), dtype=np.uint8)).save(tmp_path / "imgs" / p)
    x = rng.normal(size=(len(paths), 8)).astype(np.float32)
    x[:3, 0] += 2.0  # class a clusters, b and c are noise: a spread of APs
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    result = evaluate_folder_collection(x, folder_labels(paths), names=paths)
    doc = rankings_document({"all": result}, paths, paths, root=str(tmp_path / "imgs"), protocol="folder")
    (tmp_path / "rank.json").write_text(json.dumps(doc))
    page = tmp_path / "report.html"
    write_evaluation_report(tmp_path / "rank.json", page)
    return page, doc


def test_report_renders_images_plots_and_sorts(report_page, tmp_path):
    browser = _browser()
    page, doc = report_page
    dom = _render(browser, page, tmp_path / "profile")
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', body.group(1)))
    n_images = 9 + 9 * 8 + 2  # query thumbnails + 8 ranked each (all shown) + 2 plots
    assert attrs == {"data-images-total": str(n_images), "data-images-loaded": str(n_images),
                     "data-plots-loaded": "2"}
    assert dom.count('data-loaded="1"') == n_images and 'data-loaded="0"' not in dom
    # the script sorted the table by AP, worst first
    table = dom[dom.index('id="queries"'):]
    aps = [float(v) for v in re.findall(r'<td class="num ap" data-sort="([0-9.]+)">', table)]
    expected = sorted(e["ap"] for e in doc["settings"]["all"]["queries"])
    assert aps == pytest.approx(expected, abs=1e-6)


def test_a_broken_image_is_reported_by_the_page(report_page, tmp_path):
    browser = _browser()
    page, _ = report_page
    text = page.read_text()
    first = re.search(r'"(data:image/jpeg;base64,[^"]+)"', text).group(1)  # in the thumbnails block
    page.write_text(text.replace(first, "data:image/jpeg;base64,AAAA", 1))
    dom = _render(browser, page, tmp_path / "profile")
    assert 'data-loaded="0"' in dom
    total = int(re.search(r'data-images-total="(\d+)"', dom).group(1))
    loaded = int(re.search(r'data-images-loaded="(\d+)"', dom).group(1))
    assert loaded < total


def test_ablation_table_sorts_failed_cells_last(tmp_path):
    """Cells without a number (failed) stay below the others whatever the sort direction."""
    from retrievalkit.ablate import AblationResult, CellResult, write_outputs
    from retrievalkit.report import write_ablation_report

    browser = _browser()
    cells = [CellResult("c1", {"dim": "8"}, {"dim": "8"}, "failed", "too many dimensions"),
             CellResult("c2", {"dim": "4"}, {"dim": "4"}, "ok", map=0.5),
             CellResult("c3", {"dim": "2"}, {"dim": "2"}, "ok", map=0.7)]
    write_outputs(AblationResult(tmp_path, ["dim"], cells, {}, {}, {"dim": ["8", "4", "2"]}))
    page = tmp_path / "report.html"
    write_ablation_report(tmp_path, page)
    dom = _render(browser, page, tmp_path / "profile")
    table = dom[dom.index('id="cells"'):]
    order = re.findall(r'<tr><td data-sort="(\d)">', table)
    assert order == ["2", "4", "8"]  # opened sorted by mAP, highest first, the failed cell last
