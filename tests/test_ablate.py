"""`rkit ablate`: grid parsing, shared extraction, resume, failing cells, whitening protocol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import retrievalkit.extract as extract_module
import retrievalkit.whitening as whitening_module
from retrievalkit import cli as cli_module
from retrievalkit.ablate import (
    AblationOptions,
    expand_grid,
    format_markdown,
    load_ablation,
    parse_grid,
    run_ablation,
)
from retrievalkit.descriptors import DescriptorSet
from retrievalkit.errors import RkitError
from retrievalkit.evaluate import evaluate_folder_collection, folder_labels
from retrievalkit.extract import extract_descriptors, list_images
from retrievalkit.model import ModelConfig, build_model

BASE = {"backbone": "alexnet", "weights": "none", "image_size": "64", "pooling": "mac"}


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _collection(root: Path, classes: int = 3, per_class: int = 4, seed: int = 0) -> Path:
    """Tiny folder-per-class images: each class a colour and stripe pattern, plus noise."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        colour = rng.integers(0, 255, size=3)
        for i in range(per_class):
            image = np.tile(colour, (64, 80, 1)).astype(np.float64)
            image[:, (c * 7) % 80: (c * 7) % 80 + 10 + 5 * c] = 255 - colour
            image += rng.normal(0, 25, size=image.shape)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{i}.jpg")
    return root


def _options(data: Path, out: Path, **extra) -> AblationOptions:
    return AblationOptions(data=data, out_dir=out, device="cpu", batch_size=8, num_workers=0,
                           progress=False, **extra)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return _collection(tmp_path / "data")


def test_parse_grid_and_expand():
    grid = parse_grid(["pooling=mac,gem:p=4", "whiten=none,pca", "dim=8,full", "Image-Size=64"])
    assert grid == {"pooling": ["mac", "gem:p=4"], "whiten": ["none", "pca"], "dim": ["8", "full"],
                    "image_size": ["64"]}
    cells = expand_grid(BASE, grid)
    # whiten=none ignores dim: (mac|gem) x (none, pca:8, pca:full) = 6, not 8
    assert len(cells) == 6
    assert [c.settings["dim"] for c in cells[:3]] == ["full", "8", "full"]
    assert cells[1].settings == {"backbone": "alexnet", "weights": "none", "pooling": "mac",
                                 "image_size": "64", "scales": "1", "whiten": "pca", "dim": "8"}
    assert len({c.extraction_key for c in cells}) == 2
    # an option axis sets one option of the chosen component, keeping the others
    cells = expand_grid({"pooling": "gem:learn_p=false"}, parse_grid(["pooling.p=2,3"]))
    assert [c.settings["pooling"] for c in cells] == ["gem:learn_p=false:p=2", "gem:learn_p=false:p=3"]
    assert parse_grid({"pooling": ["mac", "spoc"], "dim": 32}) == {"pooling": ["mac", "spoc"], "dim": ["32"]}
    with pytest.raises(RkitError, match="unknown grid axis 'poolng'"):
        parse_grid(["poolng=mac"])
    with pytest.raises(RkitError, match="AXIS=VALUE"):
        parse_grid(["mac,spoc"])
    from retrievalkit.errors import RkitWarning

    with pytest.warns(RkitWarning, match="'whitening.ridge' is deprecated: use 'whiten.ridge'"):
        assert parse_grid(["whitening.ridge=1"]) == {"whiten.ridge": ["1"]}   # --whitening is a FILE elsewhere


def test_grid_shares_extractions_and_matches_direct_evaluation(data_dir, tmp_path):
    out = tmp_path / "out"
    grid = parse_grid(["pooling=mac,spoc", "whiten=none,pca", "dim=4,full"])
    result = run_ablation(BASE, grid, _options(data_dir, out))
    s = result.stats
    assert s["cells"] == 6 and s["cells_run"] == 6 and s["cells_failed"] == 0
    assert s["extractions_run"] == 2 and s["extraction_groups"] == 2  # one per pooling, not per cell
    assert s["unshared_extraction_estimate_s"] > s["extraction_s"] > 0
    assert len(list((out / "descriptors").glob("*-eval.npz"))) == 2
    assert {p.name for p in out.iterdir()} >= {"results.csv", "results.md", "results.json", "cells"}

    # the (mac, none) cell equals extracting and evaluating by hand
    root, paths = list_images(data_dir)
    model = build_model(ModelConfig("alexnet", "mac", "none")).eval()
    direct = extract_descriptors(model, paths, root=root, image_size=64, device="cpu",
                                 num_workers=0, progress=False)
    expected = evaluate_folder_collection(direct.descriptors, folder_labels(direct.paths))
    cell = next(c for c in result.cells if c.settings["pooling"] == "mac" and c.settings["whiten"] == "none")
    assert cell.map == pytest.approx(expected.map, abs=1e-6)
    assert cell.mp_at_k["1"] == pytest.approx(expected.mp_at_k[1], abs=1e-6)
    assert cell.out_dim == 256 and cell.whitening_protocol == "none"
    pca4 = next(c for c in result.cells if c.settings["whiten"] == "pca" and c.settings["dim"] == "4")
    assert pca4.out_dim == 4 and pca4.whitening_protocol == "leave-one-class-out"
    assert len(pca4.per_query_ap) == 12 and set(pca4.per_class_ap) == {"class0", "class1", "class2"}

    md = format_markdown(result)
    assert md.splitlines()[0] == "| pooling | whiten | dim | out dim | mAP | mP@1 | mP@5 | mP@10 | status |"
    loaded = load_ablation(out)
    assert [c.map for c in loaded.cells] == [c.map for c in result.cells]


def test_resume_skips_finished_cells_and_extractions(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    grid = parse_grid(["pooling=mac", "whiten=none,pca", "dim=4"])
    first = run_ablation(BASE, grid, _options(data_dir, out))
    assert first.stats["cells_run"] == 2

    def no_extraction(*args, **kwargs):
        raise AssertionError("extraction must not run again")

    monkeypatch.setattr(extract_module, "extract_descriptors", no_extraction)
    again = run_ablation(BASE, grid, _options(data_dir, out))
    assert again.stats["cells_reused"] == 2 and again.stats["cells_run"] == 0
    assert again.stats["extractions_run"] == 0
    assert [c.map for c in again.cells] == [c.map for c in first.cells]
    assert all(c.reused for c in again.cells)

    # a larger grid: only the new cell runs, on the stored descriptors
    bigger = parse_grid(["pooling=mac", "whiten=none,pca", "dim=4,2"])
    grown = run_ablation(BASE, bigger, _options(data_dir, out))
    assert grown.stats["cells"] == 3 and grown.stats["cells_reused"] == 2 and grown.stats["cells_run"] == 1
    assert grown.stats["extractions_reused"] == 1 and grown.stats["extractions_run"] == 0
    # the pca fits (one per left-out class) were stored by the first run and are truncated to 2
    assert grown.stats["whitening_fits_run"] == 0 and grown.stats["whitening_fits_reused"] == 3


def test_failing_cells_do_not_stop_the_grid(data_dir, tmp_path):
    out = tmp_path / "out"
    grid = parse_grid(["pooling=nosuchpool,mac", "whiten=pca", "dim=3,500"])
    result = run_ablation(BASE, grid, _options(data_dir, out))
    by = {(c.settings["pooling"], c.settings["dim"]): c for c in result.cells}
    assert by[("nosuchpool", "3")].status == "failed"
    assert "unknown pooling 'nosuchpool'" in by[("nosuchpool", "3")].error
    # training sets of 8 images cannot give 500 dimensions: that cell fails, the other runs
    assert by[("mac", "500")].status == "failed" and "500" in by[("mac", "500")].error
    assert by[("mac", "3")].status == "ok" and by[("mac", "3")].out_dim == 3
    assert result.stats["cells_failed"] == 3 and result.stats["cells_run"] == 1
    md = (out / "results.md").read_text()
    assert "FAILED: extraction failed" in md and "| mac | pca | 3 | 3 |" in md
    # failed cells are retried on the next run, finished ones are not
    again = run_ablation(BASE, grid, _options(data_dir, out))
    assert again.stats["cells_reused"] == 1 and again.stats["cells_failed"] == 3


def test_whitening_never_sees_the_evaluated_class(data_dir, tmp_path, monkeypatch):
    calls: list[set[str]] = []
    real_fit = whitening_module.fit_whitening

    def recording_fit(spec, data, dim=None, host=None):
        calls.append(set(data.labels.tolist()))
        return real_fit(spec, data, dim, host)

    monkeypatch.setattr(whitening_module, "fit_whitening", recording_fit)
    run_ablation(BASE, parse_grid(["whiten=pca"]), _options(data_dir, tmp_path / "loco"))
    # leave-one-class-out: one fit per class, each on the two other classes
    assert sorted(map(sorted, calls)) == [["class0", "class1"], ["class0", "class2"], ["class1", "class2"]]

    calls.clear()
    other = _collection(tmp_path / "other", classes=2, per_class=3, seed=5)
    for folder in other.iterdir():
        folder.rename(other / f"w_{folder.name}")
    result = run_ablation(BASE, parse_grid(["whiten=pca"]),
                          _options(data_dir, tmp_path / "sep", whiten_data=other))
    assert calls == [{"w_class0", "w_class1"}]  # one fit, on the separate set only
    assert result.cells[0].whitening_protocol == "separate whitening set"


def test_cli_with_config_file_and_bad_image(data_dir, tmp_path, capsys):
    (data_dir / "class0" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    cfg = tmp_path / "exp.toml"
    cfg.write_text(
        f'[ablate]\ndata = "{data_dir}"\nbackbone = "alexnet"\nweights = "none"\nimage_size = 64\n'
        f'num_workers = 0\nprogress = false\ndevice = "cpu"\n'
        f'[ablate.grid]\npooling = ["mac", "gem"]\nwhiten = ["none"]\n')
    cli_module.main(["--config", str(cfg), "ablate", "--out", str(out), "--image-size", "48"])
    text = capsys.readouterr()
    assert "pooling  whiten  out dim  mAP" in text.out and "2 cells: 2 run" in text.out
    assert "broken.jpg" in text.out + text.err  # reported and skipped, not a crash
    resolved = (out / "rkit-config.toml").read_text()
    assert "image_size = 48  # command line" in resolved
    assert 'grid = ["pooling=mac,gem", "whiten=none"]  # config file' in resolved
    doc = json.loads((out / "results.json").read_text())
    assert [c["settings"]["image_size"] for c in doc["cells"]] == ["48", "48"]
    assert all(len(c["per_query_ap"]) == 12 for c in doc["cells"])


def test_third_party_pooling_is_a_grid_value(data_dir, tmp_path, install_fake_plugin):
    install_fake_plugin("rkit-avgpool", "avgpool", "rkit_avgpool_plugin", """
        from torch import nn
        from retrievalkit import Component, hookimpl

        class AveragePooling(nn.Module):
            def forward(self, x):
                return x.mean(dim=(-2, -1))

        @hookimpl
        def rkit_poolings():
            return [Component("avgpool", AveragePooling, "mean of each channel")]
    """)
    result = run_ablation(BASE, parse_grid(["pooling=mac,avgpool"]), _options(data_dir, tmp_path / "out"))
    assert [c.status for c in result.cells] == ["ok", "ok"]
    assert result.stats["extractions_run"] == 2
    stored = [DescriptorSet.load(p).descriptors for p in sorted((tmp_path / "out" / "descriptors").glob("*-eval.npz"))]
    assert len(stored) == 2 and not np.allclose(stored[0], stored[1])  # the plugin's pooling ran


@pytest.mark.parametrize("spec", ["pca", "learned"])
def test_shared_fit_truncated_equals_a_direct_fit(spec):
    """The work sharing of whitening fits relies on this: the first D rows are the D-dim fit."""
    from retrievalkit.whitening import WhiteningData, fit_whitening

    from retrievalkit.ablate import WhiteningFits

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 12)) + np.repeat(rng.normal(size=(4, 12)) * 3, 10, axis=0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.repeat(["a", "b", "c", "d"], 10).tolist()
    fits = WhiteningFits(share=True)
    for dim in (3, 8):
        shared = fits.fitted(spec, dim, {"k": 1}, lambda: WhiteningData.from_labels(x, labels))
        direct = fit_whitening(spec, WhiteningData.from_labels(x, labels), dim)
        np.testing.assert_allclose(np.abs(shared.apply(x) @ direct.apply(x).T).diagonal(), 1.0, atol=1e-5)
    assert fits.fits_run == 1 and fits.fits_reused == 1
    with pytest.raises(RkitError, match="fewer than dim=500"):
        fits.fitted(spec, 500, {"k": 1}, lambda: WhiteningData.from_labels(x, labels))


def test_cells_are_keyed_on_resolved_options():
    """A spec written with its defaults and without them is one cell (one extraction)."""
    from retrievalkit.ablate import resolve_spec

    assert resolve_spec("pooling", "gem") == resolve_spec("pooling", "gem:p=3") == resolve_spec("pooling", "gem:p=3.0")
    assert resolve_spec("pooling", "gem") != resolve_spec("pooling", "gem:p=4")
    assert resolve_spec("pooling", "nosuchpool:x=1") == "nosuchpool:x=1"  # fails when its cell runs
    cells = expand_grid(BASE, parse_grid(["pooling=gem,gem:p=3,gem:p=3.0:learn_p=true,spoc,spoc:center_prior=true",
                                          "scales=1,1.0", "image_size=64,064"]))
    assert [c.settings["pooling"] for c in cells] == ["gem", "spoc"]
    assert len({c.extraction_key for c in cells}) == 2


def test_results_merge_earlier_cells_of_the_same_folder(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    run_ablation(BASE, parse_grid(["pooling=mac,spoc:center_prior=true"]), _options(data_dir, out))
    second = run_ablation(BASE, parse_grid(["pooling=spoc"]), _options(data_dir, out))
    assert second.stats["cells_reused"] == 1 and second.stats["cells_run"] == 0  # the same resolved cell
    assert [c.settings["pooling"] for c in second.earlier] == ["mac"]
    md = (out / "results.md").read_text()
    assert "| spoc |" in md and "| mac |" in md and "(earlier run)" in md
    loaded = load_ablation(out)
    assert [c.settings["pooling"] for c in loaded.all_cells] == ["spoc", "mac"]
    # a run on other data does not list them
    other = _collection(tmp_path / "other", classes=2, per_class=3, seed=4)
    third = run_ablation(BASE, parse_grid(["pooling=mac"]), _options(other, out))
    assert third.earlier == []
