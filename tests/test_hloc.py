"""hloc interop: pairs files (search -> sfm), sequential pairs, global-feature HDF5 layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from retrievalkit.cli import main
from retrievalkit.descriptors import DescriptorSet
from retrievalkit.errors import RkitError
from retrievalkit.hloc import (hloc_pairs_text, pairs_text, read_global_features, read_pairs,
                               relative_name, retrieval_pairs, write_global_features, write_pairs)
from retrievalkit.sfmpairs import resolve_sources, select_pairs, sequential_pairs


def run(*args) -> None:
    main([str(a) for a in args])


# -- pairs files ------------------------------------------------------------------------------
def test_retrieval_pairs_skip_the_query_itself_and_keep_num_matched():
    ranked = [["a", "b", "c", "d"], ["c", "b", "a", "d"], ["x", "a"]]
    pairs = retrieval_pairs(["a", "b", "q"], ranked, 2)
    assert pairs == [("a", "b"), ("a", "c"), ("b", "c"), ("b", "a"), ("q", "x"), ("q", "a")]
    with pytest.raises(RkitError, match="at least 1"):
        retrieval_pairs(["a"], [["b"]], 0)


def test_pairs_file_round_trip_and_errors(tmp_path):
    pairs = [("db/1.jpg", "db/2.jpg"), ("db/2.jpg", "db/1.jpg"), ("q.jpg", "db/1.jpg")]
    write_pairs(tmp_path / "pairs.txt", pairs)
    assert (tmp_path / "pairs.txt").read_text() == "db/1.jpg db/2.jpg\ndb/2.jpg db/1.jpg\nq.jpg db/1.jpg\n"
    assert read_pairs(tmp_path / "pairs.txt") == pairs
    # hloc writes no final newline; blank lines and comments are ignored
    (tmp_path / "hloc.txt").write_text("# made by hloc\na.jpg b.jpg\n\nb.jpg c.jpg")
    assert read_pairs(tmp_path / "hloc.txt") == [("a.jpg", "b.jpg"), ("b.jpg", "c.jpg")]
    (tmp_path / "bad.txt").write_text("a.jpg b.jpg\nc.jpg\n")
    with pytest.raises(RkitError, match="line 2"):
        read_pairs(tmp_path / "bad.txt")
    with pytest.raises(RkitError, match="does not exist"):
        read_pairs(tmp_path / "missing.txt")
    with pytest.raises(RkitError, match="spaces"):
        pairs_text([("my photo.jpg", "b.jpg")])


def test_names_are_made_relative_to_the_image_folder(tmp_path):
    (tmp_path / "photos" / "a").mkdir(parents=True)
    (tmp_path / "photos" / "a" / "1.jpg").write_bytes(b"")
    root = tmp_path / "photos"
    assert relative_name("a/1.jpg", root) == "a/1.jpg"
    assert relative_name(str(root / "a" / "1.jpg"), root) == "a/1.jpg"
    assert relative_name("/elsewhere/x.jpg", root) == "/elsewhere/x.jpg"
    ids = np.array([[0, 1, 2], [1, 0, -1]])
    text = hloc_pairs_text([str(root / "a" / "1.jpg"), "b.jpg"], ids, ["a/1.jpg", "b.jpg", "c.jpg"], root, 1)
    assert text == "a/1.jpg b.jpg\nb.jpg a/1.jpg\n"


def test_search_writes_hloc_pairs(tmp_path, capsys):
    descriptors = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1]], dtype=np.float32)
    names = ["A/0.jpg", "A/1.jpg", "B/2.jpg", "B/3.jpg"]
    DescriptorSet(descriptors, names, {"root": str(tmp_path)}).save(tmp_path / "db.npz")
    run("search", tmp_path / "db.npz", tmp_path / "db.npz", "--format", "hloc-pairs", "--num-matched", "2",
        "--out", tmp_path / "pairs.txt", "--no-progress")
    pairs = read_pairs(tmp_path / "pairs.txt")
    # rank order per query (A/1 . B/2 = 0.96 beats A/1 . A/0 = 0.8), the query itself left out
    assert pairs == [("A/0.jpg", "A/1.jpg"), ("A/0.jpg", "B/2.jpg"), ("A/1.jpg", "B/2.jpg"),
                     ("A/1.jpg", "A/0.jpg"), ("B/2.jpg", "A/1.jpg"), ("B/2.jpg", "B/3.jpg"),
                     ("B/3.jpg", "B/2.jpg"), ("B/3.jpg", "A/1.jpg")]
    # --num-matched larger than the database: every other image once, never the query itself
    run("search", tmp_path / "db.npz", tmp_path / "db.npz", "--format", "hloc-pairs", "--num-matched", "10",
        "--no-progress")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 12 and all(a != b for a, b in (line.split() for line in lines))


# -- pair sources -----------------------------------------------------------------------------
def test_sequential_pairs_stay_within_each_folder():
    names = ["s/3.jpg", "s/1.jpg", "s/2.jpg", "s/4.jpg", "t/1.jpg", "t/2.jpg", "top.jpg"]
    assert sequential_pairs(names, 1) == [("s/1.jpg", "s/2.jpg"), ("s/2.jpg", "s/3.jpg"), ("s/3.jpg", "s/4.jpg"),
                                          ("t/1.jpg", "t/2.jpg")]
    two = sequential_pairs(names, 2)
    assert ("s/1.jpg", "s/3.jpg") in two and ("s/1.jpg", "s/4.jpg") not in two and len(two) == 6
    assert len(sequential_pairs(names, 10)) == 6 + 1  # all 6 pairs of s/, the one of t/
    with pytest.raises(RkitError, match="at least 1"):
        sequential_pairs(names, 0)


def test_pair_sources_resolve_and_unite(tmp_path):
    assert resolve_sources("auto", 10, 50) == ["exhaustive"]
    assert resolve_sources(("auto", "sequential"), 60, 50) == ["retrieval", "sequential:overlap=5"]
    with pytest.raises(RkitError, match="sequential:overlap=N"):
        resolve_sources("sequential:overlap=x", 10, 50)
    with pytest.raises(RkitError, match="neither"):
        resolve_sources("nosuchfile.txt", 10, 50)
    write_pairs(tmp_path / "p.txt", [("c", "a"), ("a", "c"), ("a", "zz"), ("b", "b")])
    sources = resolve_sources(["sequential:overlap=1", str(tmp_path / "p.txt")], 3, 50)
    assert sources == ["sequential:overlap=1", f"file:{(tmp_path / 'p.txt').resolve()}"]
    messages: list[str] = []
    pairs = select_pairs(["a", "b", "c"], sources, messages.append, retrieval=None, k=0)
    assert pairs == [("a", "b"), ("a", "c"), ("b", "c")]  # unknown "zz" and the self-pair dropped
    assert any("1 of 4 pairs name images" in m for m in messages)
    write_pairs(tmp_path / "other.txt", [("x", "y")])
    with pytest.raises(RkitError, match="relative to the image folder"):
        select_pairs(["a", "b"], resolve_sources(str(tmp_path / "other.txt"), 2, 50), messages.append, None, 0)


@pytest.mark.slow
def test_hloc_pairs_round_trip_through_rkit_sfm(tmp_path, capsys):
    """rkit search --format hloc-pairs -> rkit sfm --pairs FILE (+ sequential), on the tiny set."""
    synth = pytest.importorskip("retrievalkit.synth")
    data = synth.generate_synthetic(tmp_path / "data", preset="tiny", progress=False)
    truth = synth.synthetic_ground_truth(data)
    images = data / "images"
    # stand-in global descriptors: views of one scene close together, scenes apart
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(truth.num_clusters, 16))
    rows = centres[truth.clusters] + 0.3 * rng.normal(size=(len(truth.images), 16))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    DescriptorSet(rows, list(truth.images), {"root": str(images.resolve())}).save(tmp_path / "db.npz")
    run("search", tmp_path / "db.npz", tmp_path / "db.npz", "--format", "hloc-pairs", "--num-matched", "3",
        "--out", tmp_path / "pairs.txt", "--no-progress")
    given = read_pairs(tmp_path / "pairs.txt")
    assert len(given) == 3 * len(truth.images)
    out = tmp_path / "sfm"
    run("sfm", images, "--out", out, "--pairs", tmp_path / "pairs.txt", "--pairs", "sequential:overlap=1",
        "--image-size", "320", "--threads", "2")
    assert "registered 24 of 24 images in 3 models" in capsys.readouterr().out
    matched = set(read_pairs(out / "pairs.txt"))
    wanted = {(min(a, b), max(a, b)) for a, b in given} | set(sequential_pairs(truth.images, 1))
    assert matched == wanted
    with pycolmap.Database.open(out / "colmap.db") as db:
        names = {image.image_id: image.name for image in db.read_all_images()}
        stored, _ = db.read_two_view_geometry_num_inliers()
    geometries = {tuple(sorted(names[i] for i in pycolmap.pair_id_to_image_pair(p))) for p in stored}
    assert geometries <= matched  # COLMAP matched exactly the pairs of the file (and the sequence)
    marker = json.loads((out / "stages" / "pairs.json").read_text())["options"]
    assert marker["mode"].endswith("+sequential:overlap=1") and len(marker["pair_files_sha256"]) == 1
    # the same file again: nothing to do; another file: pairs and later stages run again
    run("sfm", images, "--out", out, "--pairs", tmp_path / "pairs.txt", "--pairs", "sequential:overlap=1",
        "--image-size", "320", "--threads", "2")
    assert json.loads((out / "report.json").read_text())["reused_stages"] == \
        ["features", "pairs", "matches", "mapping", "database"]
    capsys.readouterr()


# -- global features (HDF5) -------------------------------------------------------------------
def test_global_features_h5_has_hlocs_layout(tmp_path):
    h5py = pytest.importorskip("h5py")
    names = ["db/a.jpg", "db/sub/b.jpg", "q.jpg"]
    rows = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    write_global_features(tmp_path / "g.h5", names, rows, [(640, 480), (10, 20), (30, 40)], meta={"k": 1})
    with h5py.File(tmp_path / "g.h5", "r") as fd:
        # hloc's list_h5_names: the parent group of every dataset
        found: set[str] = set()
        fd.visititems(lambda _, obj: found.add(obj.parent.name.strip("/")) if isinstance(obj, h5py.Dataset) else None)
        assert found == set(names)
        assert fd["db/sub/b.jpg"]["global_descriptor"].shape == (8,)
        assert np.array_equal(fd["db/a.jpg"]["global_descriptor"][()], rows[0])
        assert fd["db/a.jpg"]["image_size"][()].tolist() == [640, 480]
        assert json.loads(fd.attrs["retrievalkit_meta"]) == {"k": 1}
    read_names, read_rows = read_global_features(tmp_path / "g.h5")
    assert read_names == sorted(names) and np.array_equal(read_rows, rows)
    write_global_features(tmp_path / "half.h5", names, rows, half=True)
    with h5py.File(tmp_path / "half.h5", "r") as fd:
        assert fd["q.jpg"]["global_descriptor"].dtype == np.float16 and "image_size" not in fd["q.jpg"]


def test_rkit_extract_format_h5_matches_the_npz(tmp_path):
    pytest.importorskip("h5py")
    (tmp_path / "imgs" / "x").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, size in [("a.png", (64, 48)), ("x/b.png", (50, 70))]:
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(tmp_path / "imgs" / name)
    common = ["--backbone", "efficientnet-lite0", "--weights", "none", "--image-size", "64", "--workers", "0",
              "--device", "cpu", "--no-progress"]
    run("extract", tmp_path / "imgs", *common, "--out", tmp_path / "d.npz")
    run("extract", tmp_path / "imgs", *common, "--format", "h5", "--out", tmp_path / "d.h5")
    npz = DescriptorSet.load(tmp_path / "d.npz")
    names, rows = read_global_features(tmp_path / "d.h5")
    assert names == npz.paths == ["a.png", "x/b.png"]
    assert np.allclose(rows, npz.descriptors, atol=1e-6)


def test_h5_without_h5py_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_h5py(name, *args, **kwargs):
        if name == "h5py":
            raise ImportError("no h5py")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_h5py)
    with pytest.raises(RkitError, match=r"retrievalkit\[hloc\]"):
        write_global_features(Path(tmp_path / "g.h5"), ["a"], np.zeros((1, 2)))


def test_rkit_sfm_rejects_an_unknown_pair_source_before_any_work(tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "photos").mkdir()
    for k in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "photos" / f"{k}.png")
    with pytest.raises(SystemExit) as exc:
        run("sfm", tmp_path / "photos", "--out", tmp_path / "out", "--pairs", "retrieval", "--pairs", "nosuch.txt")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Error: --pairs 'nosuch.txt' is neither" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "colmap.db").exists()
