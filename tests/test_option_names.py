"""One meaning per flag: ``--whiten METHOD`` (a method to fit), ``--whitening FILE`` (a fitted file).

The old spellings (``--whiten FILE`` in extract/eval/search/whiten apply, ``whiten fit --method``)
keep working, hidden, with a deprecation warning; giving old and new together is an error.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrievalkit.cli import cli, main
from retrievalkit.descriptors import DescriptorSet
from retrievalkit.whitening import FittedWhitening

PATHS = [f"{folder}/{i}.jpg" for folder in ("arch", "dome", "tower") for i in range(4)]


@pytest.fixture
def collection(tmp_path):
    rng = np.random.default_rng(0)
    x = np.repeat(rng.normal(size=(3, 6)), 4, axis=0) + 0.3 * rng.normal(size=(12, 6))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return DescriptorSet(x, PATHS).save(tmp_path / "c.npz")


def run(*args) -> None:
    main([str(a) for a in args])


def test_whiten_fit_takes_the_method_as_whiten_and_method_still_works(collection, tmp_path, capsys):
    run("whiten", "fit", collection, "--whiten", "pca", "--dim", "4", "--out", tmp_path / "new.npz")
    captured = capsys.readouterr()
    assert "pca: 6 -> 4 dimensions" in captured.out and "deprecated" not in captured.err
    run("whiten", "fit", collection, "--method", "pca", "--dim", "4", "--out", tmp_path / "old.npz")
    assert "--method is deprecated: use --whiten" in capsys.readouterr().err
    np.testing.assert_array_equal(FittedWhitening.load(tmp_path / "new.npz").projection,
                                  FittedWhitening.load(tmp_path / "old.npz").projection)
    with pytest.raises(SystemExit) as info:
        run("whiten", "fit", collection, "--method", "pca", "--whiten", "pca", "--out", tmp_path / "x.npz")
    assert info.value.code == 2 and "--method and --whiten given together" in capsys.readouterr().err


def test_a_fitted_file_is_whitening_everywhere_and_whiten_file_still_works(collection, tmp_path, capsys):
    run("whiten", "fit", collection, "--whiten", "pca", "--dim", "4", "--out", tmp_path / "w.npz")
    capsys.readouterr()
    run("whiten", "apply", collection, "--whitening", tmp_path / "w.npz", "--out", tmp_path / "a.npz")
    run("whiten", "apply", collection, "--whiten", tmp_path / "w.npz", "--out", tmp_path / "b.npz")
    assert "--whiten is deprecated: use --whitening" in capsys.readouterr().err
    np.testing.assert_array_equal(DescriptorSet.load(tmp_path / "a.npz").descriptors,
                                  DescriptorSet.load(tmp_path / "b.npz").descriptors)

    run("eval", collection, "--whitening", tmp_path / "w.npz", "--json")
    new = capsys.readouterr()
    run("eval", collection, "--whiten", tmp_path / "w.npz", "--json")
    old = capsys.readouterr()
    assert "deprecated" in old.err and "deprecated" not in new.err
    assert json.loads(old.out)["map"] == json.loads(new.out)["map"]
    with pytest.raises(SystemExit):
        run("eval", collection, "--whiten", tmp_path / "w.npz", "--whitening", tmp_path / "w.npz")
    assert "given together" in capsys.readouterr().err


def test_help_shows_only_the_new_names():
    from click.testing import CliRunner

    runner = CliRunner()
    for command in (["extract"], ["eval"], ["search"], ["whiten", "apply"]):
        text = runner.invoke(cli, [*command, "--help"]).output
        assert "--whitening FILE" in text and "--whiten " not in text, command
    fit = runner.invoke(cli, ["whiten", "fit", "--help"]).output
    assert "--whiten METHOD" in fit and "--method" not in fit
    for command in (["train"], ["ablate"]):
        assert "--whiten" in runner.invoke(cli, [*command, "--help"]).output
    pooling = runner.invoke(cli, ["extract", "--help"]).output
    assert "rkit train` defaults to mac" in " ".join(pooling.split())
