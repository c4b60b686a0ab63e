"""``rkit whiten fit`` / ``apply`` through the real CLI entry point (``retrievalkit.cli.main``)."""

from __future__ import annotations

import numpy as np
import pytest

from clirun import run, run_error
from retrievalkit.descriptors import DescriptorSet
from retrievalkit.whitening import FittedWhitening, WhiteningData, fit_whitening

PATHS = [f"{folder}/{i}.jpg" for folder in ("arch", "bridge", "castle", "dome") for i in range(4)]


@pytest.fixture
def train_file(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 6))
    x = np.repeat(centres, 4, axis=0) + 0.3 * rng.normal(size=(16, 6))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return DescriptorSet(x, PATHS, {"pooling": "mac"}).save(tmp_path / "train.npz")


def test_fit_learned_from_folder_labels_then_apply(train_file, tmp_path, capsys):
    run("whiten", "fit", train_file, "--method", "learned", "--labels", "folder", "--dim", "3",
        "--out", tmp_path / "lw.npz")
    printed = capsys.readouterr().out
    assert "learned:rotation=negatives:ridge=0.01: 6 -> 3 dimensions" in printed
    assert "24 matching and 96 non-matching pairs" in printed  # 4 * C(4,2); C(16,2) - 24
    fitted = FittedWhitening.load(tmp_path / "lw.npz")
    assert (fitted.in_dim, fitted.out_dim) == (6, 3)
    assert fitted.meta["source"] == str(train_file) and fitted.meta["supervision"] == "labels folder"
    # the CLI fit is the API fit
    train = DescriptorSet.load(train_file)
    folders = [p.split("/")[0] for p in PATHS]
    expected = fit_whitening("learned", WhiteningData.from_labels(train.descriptors, folders), dim=3)
    np.testing.assert_allclose(fitted.projection, expected.projection, atol=1e-10)

    run("whiten", "apply", train_file, "--whiten", tmp_path / "lw.npz", "--out", tmp_path / "out.npz")
    captured = capsys.readouterr()
    assert "was learned on" in captured.err  # applying to the training file itself is flagged
    out = DescriptorSet.load(tmp_path / "out.npz")
    assert out.paths == PATHS and out.dim == 3
    np.testing.assert_allclose(out.descriptors, expected.apply(train.descriptors), atol=1e-6)
    assert out.meta["pooling"] == "mac"
    assert out.meta["whitening"]["method"] == "learned:rotation=negatives:ridge=0.01"
    assert out.meta["whitening"]["out_dim"] == 3


def test_fit_pca_needs_no_supervision(train_file, tmp_path, capsys):
    run("whiten", "fit", train_file, "--method", "pca", "--out", tmp_path / "pca.npz")
    assert "pca: 6 -> 6 dimensions (rank 6) from 16 descriptors" in capsys.readouterr().out
    assert FittedWhitening.load(tmp_path / "pca.npz").out_dim == 6


def test_fit_from_pairs_file_and_labels_file(train_file, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("arch/0.jpg\tarch/1.jpg\t1\nbridge/0.jpg\tbridge/2.jpg\t1\n"
                     "castle/0.jpg\tcastle/3.jpg\t1\n0\t4\t0\n5\t9\t0\n")
    run("whiten", "fit", train_file, "--pairs", pairs, "--dim", "2", "--out", tmp_path / "p.npz")
    fitted = FittedWhitening.load(tmp_path / "p.npz")
    assert fitted.meta["n_positive_pairs"] == 3 and fitted.meta["n_negative_pairs"] == 2
    labels = tmp_path / "labels.tsv"
    labels.write_text("".join(f"{p}\t{'left' if i < 8 else 'right'}\n" for i, p in enumerate(PATHS)))
    run("whiten", "fit", train_file, "--labels", labels, "--dim", "1", "--out", tmp_path / "l.npz")
    # two classes of 8: 2 * C(8,2) = 56 matching and 64 non-matching pairs
    assert FittedWhitening.load(tmp_path / "l.npz").meta["n_negative_pairs"] == 64


def test_user_errors_exit_2_with_what_to_do(train_file, tmp_path, capsys):
    err = run_error(capsys, "whiten", "fit", train_file, "--out", tmp_path / "w.npz")
    assert "needs matching and non-matching pairs" in err and "--labels folder" in err
    err = run_error(capsys, "whiten", "fit", train_file, "--method", "pca", "--dim", "16", "--out", tmp_path / "w.npz")
    assert "at most 6 meaningful dimensions" in err and "--dim 6" in err
    err = run_error(capsys, "whiten", "fit", tmp_path / "missing.npz", "--method", "pca", "--out", tmp_path / "w.npz")
    assert "does not exist" in err and "rkit extract" in err
    err = run_error(capsys, "whiten", "fit", train_file, "--labels", "nolabels.txt", "--out", tmp_path / "w.npz")
    assert "write 'folder'" in err
    assert not (tmp_path / "w.npz").exists()
    DescriptorSet(np.ones((2, 4), np.float32), ["a", "b"]).save(tmp_path / "other.npz")
    run("whiten", "fit", train_file, "--method", "pca", "--dim", "2", "--out", tmp_path / "w.npz")
    err = run_error(capsys, "whiten", "apply", tmp_path / "other.npz", "--whiten", tmp_path / "w.npz",
                 "--out", tmp_path / "o.npz")
    assert "expects 6-D descriptors" in err and "same model" in err
    err = run_error(capsys, "whiten", "apply", train_file, "--whiten", tmp_path / "none.npz", "--out", tmp_path / "o.npz")
    assert "rkit whiten fit" in err
