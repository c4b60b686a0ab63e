"""The training database: pair quantities (SPEC 4), the pair cache, persistence, the summary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrievalkit.errors import RkitError
from retrievalkit.trainingdb import (ARRAYS_NAME, FORMAT_VERSION, JSON_NAME, TrainingDatabase,
                                     load_database)


def small_db() -> TrainingDatabase:
    """Images 0, 1, 2 in model 0 and image 3 in model 1; hand-chosen points and depths.

    P(0) = {1,2,3,4} at depths 2,2,4,4 (focal 100); P(1) = {3,4,5} at depths 1,1,3 (focal 100);
    P(2) = {10} (focal 50); P(3) = {20, 21} (focal 10).
    0 and 1 share {3, 4}: overlap(0,1) = 2/4, overlap(1,0) = 2/3; the shared points lie at
    median depth 4 in image 0 and 1 in image 1, so s_0 = 100/4 = 25, s_1 = 100/1 = 100, scale 4.
    """
    return TrainingDatabase(
        images=["a/0.jpg", "a/1.jpg", "a/2.jpg", "b/3.jpg"],
        clusters=np.array([0, 0, 0, 1]),
        point_ids=[np.array([1, 2, 3, 4]), np.array([3, 4, 5]), np.array([10]), np.array([20, 21])],
        point_depths=[np.array([2.0, 2, 4, 4]), np.array([1.0, 1, 3]), np.array([5.0]), np.array([1.0, 1])],
        centres=np.arange(12, dtype=float).reshape(4, 3),
        focals=np.array([100.0, 100, 50, 10]),
        meta={"source": "test"},
    )


def test_pair_quantities_match_hand_computed_values():
    db = small_db()
    assert db.shared_points(0, 1) == 2 and db.shared_points(1, 0) == 2
    assert db.overlap(0, 1) == pytest.approx(0.5)
    assert db.overlap(1, 0) == pytest.approx(2 / 3)
    assert db.scale_change(0, 1) == pytest.approx(4.0)
    assert db.scale_change(1, 0) == pytest.approx(4.0)
    assert db.shared_points(0, 2) == 0 and db.overlap(0, 2) == 0.0
    assert db.scale_change(0, 2) == float("inf")
    assert db.co_observing(0).tolist() == [1]
    assert db.co_observing(2).tolist() == []
    assert db.co_observing(3).tolist() == []


def test_pair_cache_gives_the_same_answers_as_direct_computation():
    direct = small_db()
    cached = small_db()
    cache = cached.use_pair_statistics()
    assert cache.pairs.tolist() == [[0, 1]]  # only pairs of one model sharing points
    assert cache.shared.tolist() == [2]
    assert cache.overlap_ab[0] == pytest.approx(0.5) and cache.overlap_ba[0] == pytest.approx(2 / 3)
    for q in range(4):
        assert cached.co_observing(q).tolist() == direct.co_observing(q).tolist()
        for i in range(4):
            if q == i:
                continue
            assert cached.shared_points(q, i) == direct.shared_points(q, i)
            assert cached.overlap(q, i) == pytest.approx(direct.overlap(q, i))
            assert cached.scale_change(q, i) == pytest.approx(direct.scale_change(q, i))


def test_points_shared_across_models_do_not_make_pairs():
    # ids are global: two models that happen to reuse an id must not be linked by the cache
    db = TrainingDatabase(images=["x", "y"], clusters=[0, 1], point_ids=[[7], [7]],
                          point_depths=[[1.0], [1.0]], focals=np.ones(2), centres=np.zeros((2, 3)))
    assert len(db.compute_pair_statistics()) == 0
    db.use_pair_statistics()
    assert db.co_observing(0).tolist() == []


def test_save_and_load_round_trip(tmp_path):
    db = small_db()
    db.root = tmp_path / "photos"
    db.positive_pairs = np.array([[0, 1], [1, 0]])
    db.use_pair_statistics()
    db.save(tmp_path / "db")
    assert (tmp_path / "db" / JSON_NAME).is_file() and (tmp_path / "db" / ARRAYS_NAME).is_file()
    header = json.loads((tmp_path / "db" / JSON_NAME).read_text())
    assert header["format_version"] == FORMAT_VERSION and header["images"] == db.images

    back = load_database(tmp_path / "db")
    assert back.images == db.images and back.root == tmp_path / "photos"
    assert back.clusters.tolist() == [0, 0, 0, 1]
    assert [p.tolist() for p in back.point_ids] == [p.tolist() for p in db.point_ids]
    assert np.allclose(np.concatenate(back.point_depths), np.concatenate(db.point_depths))
    assert np.allclose(back.centres, db.centres) and np.allclose(back.focals, db.focals)
    assert back.positive_pairs.tolist() == [[0, 1], [1, 0]]
    assert back.meta == {"source": "test"}
    assert back.pair_cache is not None and back.pair_cache.pairs.tolist() == [[0, 1]]
    assert back.scale_change(0, 1) == pytest.approx(4.0)
    assert back.image_path(3) == tmp_path / "photos" / "b" / "3.jpg"
    # the rkit sfm output folder and the JSON file itself are accepted too
    (tmp_path / "out").mkdir()
    db.save(tmp_path / "out" / "database")
    assert load_database(tmp_path / "out").images == db.images
    assert load_database(tmp_path / "db" / JSON_NAME).images == db.images


def test_database_without_points_round_trips_and_refuses_point_queries(tmp_path):
    db = TrainingDatabase(images=["p", "q", "r"], clusters=[5, 5, 6])
    db.save(tmp_path / "db")
    back = load_database(tmp_path / "db")
    assert not back.has_points and back.point_ids is None and back.pair_cache is None
    assert back.co_observing(0).tolist() == [1]  # whole model without points
    with pytest.raises(RkitError, match="needs the 3D points"):
        back.shared_points(0, 1)
    with pytest.raises(RkitError, match="m2 positive miner needs"):
        back.require_points("the m2 positive miner")


def test_load_errors_say_what_to_do(tmp_path):
    with pytest.raises(RkitError, match="rkit sfm IMAGES --out DIR"):
        load_database(tmp_path)
    small_db().save(tmp_path / "db")
    header = json.loads((tmp_path / "db" / JSON_NAME).read_text())
    header["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "db" / JSON_NAME).write_text(json.dumps(header))
    with pytest.raises(RkitError, match="upgrade retrievalkit"):
        load_database(tmp_path / "db")
    (tmp_path / "db" / JSON_NAME).write_text("{not json")
    with pytest.raises(RkitError, match="damaged"):
        load_database(tmp_path / "db")


def test_summary_counts():
    db = small_db()
    db.use_pair_statistics()
    summary = db.summary()
    assert summary["images"] == 4 and summary["models"] == 2
    assert summary["model_sizes"] == {0: 3, 1: 1}
    assert summary["points"] == 8  # {1, 2, 3, 4, 5, 10, 20, 21}
    assert summary["co_observing_pairs"] == 1
    assert summary["overlap_median"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert summary["scale_change_median"] == pytest.approx(4.0)


def test_depths_stay_with_their_ids_when_ids_are_given_unsorted():
    # small_db's image 0 with its ids (and depths) in another order: same scale change
    db = TrainingDatabase(images=["x", "y"], clusters=[0, 0],
                          point_ids=[[4, 3, 1, 2], [3, 4, 5]], point_depths=[[4.0, 4, 2, 2], [1.0, 1, 3]],
                          focals=np.array([100.0, 100]), centres=np.zeros((2, 3)))
    assert db.point_ids[0].tolist() == [1, 2, 3, 4]
    assert db.point_depths[0].tolist() == [2.0, 2.0, 4.0, 4.0]
    assert db.scale_change(0, 1) == pytest.approx(4.0)


def test_damaged_arrays_file_is_a_clear_error(tmp_path):
    small_db().save(tmp_path / "db")
    (tmp_path / "db" / ARRAYS_NAME).write_bytes(b"not a zip archive")
    with pytest.raises(RkitError, match="damaged"):
        load_database(tmp_path / "db")
