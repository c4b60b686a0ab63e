"""`rkit report`: the HTML of an evaluation (rankings file) and of an ablation folder."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrievalkit import cli as cli_module
from retrievalkit.ablate import AblationOptions, parse_grid, run_ablation
from retrievalkit.errors import RkitError
from retrievalkit.evaluate import evaluate_folder_collection, folder_labels, rankings_document
from retrievalkit.report import precision_recall_curve, write_ablation_report, write_evaluation_report


class _Collect(HTMLParser):
    """Tags with their attributes, and every table row's cells."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict((k, v or "") for k, v in attrs)))


def _parse(path: Path) -> list[tuple[str, dict[str, str]]]:
    parser = _Collect()
    parser.feed(path.read_text())
    return parser.tags


def _images(root: Path, names: list[str]) -> None:
    rng = np.random.default_rng(1)
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, size=(40, 50, 3), dtype=np.uint8)).save(path)


def test_precision_recall_curve_by_hand():
    precision, recall = precision_recall_curve(["positive", "negative", "junk", "positive"], 3)
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 3])
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 2 / 3])
    # unknown number of positives: recall relative to those found
    _, recall = precision_recall_curve(["negative", "positive"], None)
    np.testing.assert_allclose(recall, [0, 1])


@pytest.fixture
def rankings_file(tmp_path) -> Path:
    """6 images in 2 folders with hand-made descriptors: a/2 ranks b's images first."""
    paths = ["a/0.jpg", "a/1.jpg", "a/2.jpg", "b/0.jpg", "b/1.jpg", "b/2.jpg"]
    root = tmp_path / "imgs"
    _images(root, paths)
    (root / "b" / "2.jpg").write_bytes(b"broken")  # shown as a placeholder, not a crash
    x = np.array([[1, 0, 0], [0.9, 0.1, 0], [0.1, 1, 0], [0, 1, 0.1], [0, 0.9, 0.2], [0.2, 0.8, 0.1]], dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    result = evaluate_folder_collection(x, folder_labels(paths), names=paths)
    doc = rankings_document({"all": result}, paths, paths, root=str(root), protocol="folder")
    path = tmp_path / "rank.json"
    path.write_text(json.dumps(doc))
    return path


def test_evaluation_report(rankings_file, tmp_path):
    doc = json.loads(rankings_file.read_text())
    entries = doc["settings"]["all"]["queries"]
    out = tmp_path / "report" / "eval.html"
    summary = write_evaluation_report(rankings_file, out)
    assert summary.rows == 6 and summary.plots == 2 and summary.images == 6 and summary.images_failed == 1
    tags = _parse(out)
    rows = [a for t, a in tags if t == "tr"]
    assert len(rows) == 1 + 6  # header + one per query
    figures = [a.get("class") for t, a in tags if t == "figure" and a.get("class") in {"pos", "neg", "junk"}]
    # each query shows its whole ranking here (5 others): statuses exactly as in the file
    expected = [t["status"][:3] for e in entries for t in e["top"]]
    assert figures == expected
    text = out.read_text()
    worst = min(entries, key=lambda e: e["ap"])
    assert worst["query"] == "a/2.jpg" and f'data-sort="{worst["ap"]:.6f}"' in text
    assert text.count('class="plot"') == 2 and text.count('<svg class="pr"') == 6
    assert "unreadable" in text and "1 image(s) could not be shown" in text
    assert "http://" not in text and "https://" not in text  # self-contained
    thumbs = json.loads(re.search(r'<script type="application/json" id="thumbs">(.*?)</script>', text).group(1))
    assert len(thumbs) == 5 and text.count("data:image/jpeg") == 5  # each image embedded once
    # relative links instead of embedded thumbnails
    linked = tmp_path / "linked.html"
    write_evaluation_report(rankings_file, linked, link_images=True)
    assert 'src="imgs/a/0.jpg"' in linked.read_text()


def test_report_cli_and_errors(rankings_file, tmp_path, capsys):
    cli_module.main(["report", str(rankings_file), "--max-queries", "2"])
    assert "wrote evaluation report" in capsys.readouterr().out
    html = rankings_file.with_suffix(".html").read_text()
    assert html.count('<td class="query"') == 2 and "a/2.jpg" in html  # the 2 worst
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "other"}')
    with pytest.raises(RkitError, match="not a rankings file"):
        write_evaluation_report(bad, tmp_path / "x.html")
    with pytest.raises(RkitError, match="setting 'hard' is not in"):
        write_evaluation_report(rankings_file, tmp_path / "x.html", setting="hard")


def test_ablation_report(tmp_path):
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for c in range(2):
        colour = rng.integers(0, 255, size=3)
        for i in range(3):
            image = np.clip(np.tile(colour, (48, 48, 1)) + rng.normal(0, 30, (48, 48, 3)), 0, 255)
            (data / f"c{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.astype(np.uint8)).save(data / f"c{c}" / f"{i}.jpg")
    out = tmp_path / "abl"
    run_ablation({"backbone": "alexnet", "weights": "none", "image_size": "48"},
                 parse_grid(["pooling=mac,gem", "whiten=none,pca", "dim=2"]),
                 AblationOptions(data, out, device="cpu", num_workers=0, progress=False))
    summary = write_ablation_report(out, out / "report.html")
    assert summary.rows == 4 and summary.images == 6 and summary.images_failed == 0
    # bar chart, heatmap, and a plot per axis along which some line has 2+ points: pooling only
    # (whiten=none cells have dim "full", pca cells dim 2, so no line varies whiten or dim alone)
    assert summary.plots == 3 and "mAP by pooling" in (out / "report.html").read_text()
    text = (out / "report.html").read_text()
    table = text[text.index('id="cells"'): text.index("</table>", text.index('id="cells"'))]
    assert len(re.findall(r"<tr>", table)) == 1 + 4
    assert '<th data-initial-sort="-1">mAP</th>' in table
    assert text.count('<td class="query"') == 6
