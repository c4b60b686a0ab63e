"""Issue "silent wrong numbers": damaged descriptors are refused where they are read, AP stays in
[0, 1], a query never ranks itself, labels come from real path components, and every damaged
descriptors file is one clear error (``rkit eval`` / ``rkit search``, exit status 2)."""

from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest

import clirun
from retrievalkit.datasets import folder_labels, read_labels
from retrievalkit.descriptors import DescriptorSet, NonFiniteDescriptorsError, check_finite
from retrievalkit.errors import RkitError
from retrievalkit.evaluate import evaluate_descriptors, evaluate_folder_collection
from retrievalkit.index import build_index, rank_all, rank_all_scored, search
from retrievalkit.metrics import MetricError, ranking_statistics


def run_error(capsys, *args) -> str:
    err = clirun.run_error(capsys, *args)
    assert err.startswith("Error: ")
    return err


def unit_rows(n: int, d: int = 4, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def collection(tmp_path, descriptors=None, name="db.npz"):
    descriptors = unit_rows(6) if descriptors is None else descriptors
    paths = [f"{c}/{i}.jpg" for i, c in enumerate("AAABBB")]
    return DescriptorSet(descriptors, paths).save(tmp_path / name), paths


# -- non-finite descriptors -------------------------------------------------------------------------
def test_check_finite_names_the_source_the_count_and_the_rows():
    x = unit_rows(8)
    x[2, 1] = np.nan
    x[5, 0] = np.inf
    with pytest.raises(NonFiniteDescriptorsError) as info:
        check_finite(x, "db.npz", paths=[f"{i}.jpg" for i in range(8)])
    message = str(info.value)
    assert "db.npz" in message and "2 of 8 descriptors" in message
    assert "2 (2.jpg), 5 (5.jpg)" in message
    assert check_finite(unit_rows(3), "fine") is not None
    from retrievalkit.descriptors import _non_finite_rows

    assert _non_finite_rows(x, block=3).tolist() == [2, 5]          # checked in blocks of rows
    assert _non_finite_rows(np.zeros((0, 4))).tolist() == []


def test_one_nan_descriptor_is_refused_by_eval_not_scored(tmp_path, capsys):
    x = unit_rows(6)
    x[3] = np.nan          # this made `rkit eval` print mAP 1.05
    db, _ = collection(tmp_path, x)
    err = run_error(capsys, "eval", db)
    assert f"descriptors file {db}" in err and "1 of 6 descriptors hold NaN" in err and "B/3.jpg" in err


def test_nan_query_or_database_is_refused_by_search(tmp_path, capsys):
    db, _ = collection(tmp_path)
    bad_query = DescriptorSet(np.full((1, 4), np.nan, np.float32), ["q.jpg"]).save(tmp_path / "q.npz")
    err = run_error(capsys, "search", db, bad_query)
    assert "q.npz" in err and "1 of 1 descriptors hold NaN" in err
    x = unit_rows(6)
    x[0, 0] = np.inf
    bad_db, _ = collection(tmp_path, x, "bad.npz")
    assert "bad.npz" in run_error(capsys, "search", bad_db, db)


def test_index_entry_refuses_non_finite_arrays_made_in_memory():
    x = unit_rows(6)
    x[1, 2] = np.nan
    with pytest.raises(NonFiniteDescriptorsError, match="database descriptors"):
        build_index(x)
    with pytest.raises(NonFiniteDescriptorsError, match="database descriptors"):
        rank_all(x, unit_rows(2))
    with pytest.raises(NonFiniteDescriptorsError, match="query descriptors"):
        search(build_index(unit_rows(6)), x[1:2], 3)
    with pytest.raises(NonFiniteDescriptorsError):            # e.g. `rkit ablate`'s in-memory sets
        evaluate_folder_collection(x, list("AAABBB"))
    with pytest.raises(NonFiniteDescriptorsError, match=r"extracted: 1 of 6 .*row 1 \(A/1.jpg\)"):
        evaluate_descriptors(DescriptorSet(x, [f"{c}/{i}.jpg" for i, c in enumerate("AAABBB")]), source="extracted")


def test_self_exclusion_is_by_row_number_even_with_duplicates():
    x = unit_rows(5)
    x = np.concatenate([x, x])          # row i and row i + 5 are identical: equal scores
    ranking, scores = rank_all_scored(x, x, exclude_self=True, top=3)
    assert ranking.shape == (10, 9)
    for q in range(10):
        assert q not in ranking[q] and sorted(ranking[q].tolist()) == sorted(set(range(10)) - {q})
        assert ranking[q, 0] == (q + 5) % 10                        # its duplicate comes first
    np.testing.assert_allclose(scores, np.take_along_axis(x @ x.T, ranking[:, :3], axis=1), rtol=1e-6)


# -- AP is never above 1 --------------------------------------------------------------------------------
def test_a_ranking_with_more_positives_than_the_query_has_is_refused():
    # the old bug: the query itself stayed in its ranking and counted as one of its positives
    is_positive = np.array([[True, True, False]])
    with pytest.raises(MetricError, match="more positives than their query has"):
        ranking_statistics(is_positive, None, np.array([1]))


def test_ap_and_precision_stay_in_unit_interval_on_random_rankings():
    rng = np.random.default_rng(3)
    is_positive = rng.random((300, 40)) < 0.3
    is_junk = rng.random((300, 40)) < 0.1
    n_positives = (is_positive & ~is_junk).sum(axis=1) + rng.integers(0, 3, size=300)
    ap, precision = ranking_statistics(is_positive, is_junk, n_positives)
    finite = np.isfinite(ap)
    assert finite.sum() > 250 and ap[finite].max() <= 1.0 and ap[finite].min() >= 0.0
    assert np.nanmax(precision) <= 1.0
    perfect, _ = ranking_statistics(np.array([[True, True, False]]), None, np.array([2]))
    assert perfect[0] == 1.0


# -- damaged descriptors files: one clear error each ---------------------------------------------------
def test_complex_valued_descriptors_file(tmp_path, capsys):
    np.savez(tmp_path / "c.npz", descriptors=unit_rows(6).astype(np.complex64) * 1j,
             paths=np.asarray([f"A/{i}.jpg" for i in range(6)]))
    err = run_error(capsys, "eval", tmp_path / "c.npz")
    assert "c.npz" in err and "complex" in err


class _Marker:
    def __reduce__(self):
        return (open, ("UNPICKLED-MARKER", "w"))


def test_object_array_is_refused_without_unpickling(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    objects = np.empty(6, dtype=object)
    objects[:] = [_Marker() for _ in range(6)]
    np.savez(tmp_path / "o.npz", descriptors=objects, paths=np.asarray([f"A/{i}.jpg" for i in range(6)]))
    err = run_error(capsys, "eval", tmp_path / "o.npz")
    assert "o.npz" in err and "Python objects" in err and "never read" in err
    assert not (tmp_path / "UNPICKLED-MARKER").exists()


def test_truncated_npz_is_a_clear_error(tmp_path, capsys):
    db, _ = collection(tmp_path)
    data = db.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    err = run_error(capsys, "eval", cut)
    assert "cut.npz is damaged or truncated" in err and "rkit extract" in err
    # a zip whose member is cut short (central directory intact) is refused too
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("descriptors.npy", b"\x93NUMPY garbage")
        archive.writestr("paths.npy", b"")
    (tmp_path / "member.npz").write_bytes(buffer.getvalue())
    assert "member.npz" in run_error(capsys, "eval", tmp_path / "member.npz")


def test_not_an_npz_archive(tmp_path, capsys):
    np.save(tmp_path / "plain.npy", unit_rows(3))
    (tmp_path / "plain.npz").write_bytes((tmp_path / "plain.npy").read_bytes())
    assert "plain.npz is not a descriptors file" in run_error(capsys, "eval", tmp_path / "plain.npz")
    (tmp_path / "pickle.npz").write_bytes(pickle.dumps({"descriptors": 1}))
    assert "pickle.npz" in run_error(capsys, "eval", tmp_path / "pickle.npz")


# -- labels from real path components -----------------------------------------------------------------
def test_backslash_in_a_file_name_does_not_change_its_label():
    assert folder_labels(["x/a\\b.jpg", "x/c.jpg", "a\\b.jpg"]) == ["x", "x", ""]
    assert folder_labels(["C:\\data\\sacre\\1.jpg", "\\\\server\\share\\lund\\2.jpg"]) == ["sacre", "lund"]


def test_two_folders_with_backslashed_names_are_two_classes(tmp_path, capsys):
    paths = ["arch/a\\1.jpg", "arch/2.jpg", "arch/b\\c\\3.jpg", "dome/x\\4.jpg", "dome/5.jpg", "dome/6.jpg"]
    db = DescriptorSet(unit_rows(6), paths).save(tmp_path / "db.npz")
    evaluation = evaluate_descriptors(DescriptorSet.load(db))
    assert evaluation.info["classes"] == 2 and evaluation.info["class_sizes"] == {"arch": 3, "dome": 3}
    assert list(read_labels("folder", paths)) == ["arch"] * 3 + ["dome"] * 3


def test_read_labels_file_errors(tmp_path):
    labels = tmp_path / "labels.tsv"
    labels.write_text("a.jpg\tone\n# comment\nb.jpg\ttwo\n")
    assert list(read_labels(labels, ["b.jpg", "a.jpg"])) == ["two", "one"]
    with pytest.raises(RkitError, match="no label for 1 of the 3"):
        read_labels(labels, ["a.jpg", "b.jpg", "c.jpg"])
    with pytest.raises(RkitError, match="write 'folder'"):
        read_labels(tmp_path / "missing.tsv", ["a.jpg"])
