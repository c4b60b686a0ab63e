"""Importing a retrieval-SfM db.pkl: paths from cids, clusters, qidxs/pidxs, no 3D points."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from retrievalkit.cli import main
from retrievalkit.dbpkl import cid_to_path, import_dbpkl
from retrievalkit.errors import RkitError
from retrievalkit.plugins import get_host
from retrievalkit.trainingdb import load_database

CIDS = ["0a1b2c3d4e5f", "ffeeddccbbaa", "112233445566", "abcdefabcdef", "998877665544"]


def write_dbpkl(path, data=None):
    data = data or {
        "train": {"cids": CIDS, "cluster": [7, 7, 3, 3, 3], "qidxs": [0, 2, 3], "pidxs": [1, 3, 4]},
        "val": {"cids": CIDS[:2], "cluster": [1, 1], "qidxs": [1], "pidxs": [0]},
    }
    with open(path, "wb") as fh:
        pickle.dump(data, fh)
    return path


def test_cid_to_path_follows_the_retrieval_sfm_layout():
    # ims/<last two>/<two before>/<two before that>/<cid>
    assert cid_to_path("0a1b2c3d4e5f") == "ims/5f/4e/3d/0a1b2c3d4e5f"
    with pytest.raises(RkitError, match="shorter than 6"):
        cid_to_path("abc")


def test_import_train_split(tmp_path):
    db = import_dbpkl(write_dbpkl(tmp_path / "db.pkl"), root=tmp_path / "data")
    assert db.images[0] == "ims/5f/4e/3d/0a1b2c3d4e5f"
    assert db.images[1] == "ims/aa/bb/cc/ffeeddccbbaa"
    assert db.image_path(2) == tmp_path / "data" / "ims" / "66" / "55" / "44" / "112233445566"
    assert db.clusters.tolist() == [7, 7, 3, 3, 3]
    assert db.num_clusters == 2
    assert db.positive_pairs.tolist() == [[0, 1], [2, 3], [3, 4]]
    assert not db.has_points
    assert db.co_observing(2).tolist() == [3, 4]  # the whole cluster without 3D points
    assert db.meta["split"] == "train"


def test_import_val_split_and_default_root(tmp_path):
    db = import_dbpkl(write_dbpkl(tmp_path / "db.pkl"), split="val")
    assert len(db) == 2 and db.root == tmp_path
    assert db.positive_pairs.tolist() == [[1, 0]]


def test_miners_needing_points_say_the_database_lacks_them(tmp_path):
    db = import_dbpkl(write_dbpkl(tmp_path / "db.pkl"))
    with pytest.raises(RkitError, match="db.pkl"):
        db.require_points("the m3 miner")
    miner = get_host().build("miner", "m2")
    with pytest.raises(RkitError, match="needs the 3D points"):
        miner.mine(np.array([0]), db, None, np.random.default_rng(0))


def test_bad_files_raise_clear_errors(tmp_path):
    with pytest.raises(RkitError, match="does not exist"):
        import_dbpkl(tmp_path / "missing.pkl")
    path = write_dbpkl(tmp_path / "db.pkl")
    with pytest.raises(RkitError, match="no split 'test'"):
        import_dbpkl(path, split="test")
    write_dbpkl(path, {"train": {"cids": CIDS, "cluster": [1] * 5}})
    with pytest.raises(RkitError, match="lacks qidxs, pidxs"):
        import_dbpkl(path)
    write_dbpkl(path, {"train": {"cids": CIDS, "cluster": [1] * 5, "qidxs": [0], "pidxs": [9]}})
    with pytest.raises(RkitError, match="outside the 5 images"):
        import_dbpkl(path)
    write_dbpkl(path, {"train": 5})
    with pytest.raises(RkitError, match="holds a int, not the dict"):
        import_dbpkl(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"train": _Evil()}, fh)
    with pytest.raises(RkitError, match="refusing to load"):
        import_dbpkl(path)


def test_numpy_arrays_in_the_pickle_are_accepted(tmp_path):
    data = {"train": {"cids": np.array(CIDS), "cluster": np.array([0, 0, 1, 1, 1]),
                      "qidxs": np.array([0]), "pidxs": np.array([1])}}
    db = import_dbpkl(write_dbpkl(tmp_path / "db.pkl", data))
    assert db.clusters.tolist() == [0, 0, 1, 1, 1] and db.positive_pairs.tolist() == [[0, 1]]


def test_cli_import_then_stats(tmp_path, capsys):
    path = write_dbpkl(tmp_path / "db.pkl")
    main(["sfm", "--import-dbpkl", str(path), "--root", str(tmp_path), "--out", str(tmp_path / "out")])
    assert "imported 5 images in 2 clusters (3 query/positive pairs)" in capsys.readouterr().out
    db = load_database(tmp_path / "out")
    assert db.positive_pairs.tolist() == [[0, 1], [2, 3], [3, 4]] and not db.has_points
    main(["sfm", "--stats", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "has_points" in out and "False" in out and "positive_pairs             3" in out


@pytest.mark.parametrize("cid", ["../../../etc/passwd", "ab/../../cdefgh", "..\\..\\windows", "......"])
def test_image_ids_cannot_leave_the_images_root(tmp_path, cid):
    with pytest.raises(RkitError, match="not a plain file name"):
        cid_to_path(cid)
    data = {"train": {"cids": CIDS[:4] + [cid], "cluster": [0, 0, 1, 1, 1], "qidxs": [0], "pidxs": [1]}}
    with pytest.raises(RkitError, match="outside the images folder"):
        import_dbpkl(write_dbpkl(tmp_path / "db.pkl", data), root=tmp_path)


def test_whiten_pkl_is_one_split_and_clusters_come_from_pairs(tmp_path):
    from retrievalkit.dbpkl import write_whitening_lists

    flat = {"cids": CIDS, "qidxs": [0, 2, 3], "pidxs": [1, 3, 4]}          # no 'cluster', no split level
    path = write_dbpkl(tmp_path / "x-whiten.pkl", flat)
    db = import_dbpkl(path, root=tmp_path)
    assert db.clusters.tolist() == [0, 0, 1, 1, 1] and db.positive_pairs.tolist() == [[0, 1], [2, 3], [3, 4]]
    images, pairs = write_whitening_lists(path, images_root=tmp_path / "other")
    assert images.read_text().splitlines()[0] == "other/ims/5f/4e/3d/0a1b2c3d4e5f"
    assert pairs.read_text().splitlines()[1] == "other/ims/66/55/44/112233445566\tother/ims/ef/cd/ab/abcdefabcdef\t1"
