"""Miners on a small hand-built training database (SPEC section 4).

The database (9 images, 4 models):

* model 0: images 0-3. Image 0 sees points 0-9 at depth 10 (focal 100: apparent size 10).
  Image 1 sees 0-7 at depth 10 (overlap 8/10, scale 1.0); image 2 sees 0-2 at depth 5
  (overlap 0.3, apparent size 20: scale 2.0); image 3 sees 5-9 and 100-104 at depth 8
  (overlap 0.5, apparent size 12.5: scale 1.25).
* model 1: images 4, 5 (share points 203-205); model 2: images 6, 7 (no shared point);
  model 3: image 8 alone.

Descriptors (4-D, unit length) against f(0) = e0: f(2) is the closest of model 0 (m1), and
outside model 0 the ranking is 6 (0.958), 4 (0.894), 5 (0.857), 7 (0.447), 8 (0.0).
"""

from __future__ import annotations

import numpy as np
import pytest

from retrievalkit.mining import NotEnoughNegatives, first_per_model, nearest_neighbours
from retrievalkit.plugins import get_host
from retrievalkit.trainingdb import TrainingDatabase
from retrievalkit.tuples import assemble_tuples


def unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def db() -> TrainingDatabase:
    points = [np.arange(10), np.arange(8), np.arange(3), np.r_[np.arange(5, 10), np.arange(100, 105)],
              np.arange(200, 206), np.arange(203, 211), np.arange(300, 305), np.arange(400, 405),
              np.arange(500, 503)]
    depths = [np.full(10, 10.0), np.full(8, 10.0), np.full(3, 5.0), np.full(10, 8.0),
              np.full(6, 4.0), np.full(8, 4.0), np.full(5, 3.0), np.full(5, 3.0), np.full(3, 2.0)]
    return TrainingDatabase(images=[f"img{i}.jpg" for i in range(9)], clusters=[0, 0, 0, 0, 1, 1, 2, 2, 3],
                            point_ids=points, point_depths=depths, focals=np.full(9, 100.0))


@pytest.fixture
def descriptors() -> np.ndarray:
    return np.stack([unit(1, 0, 0, 0), unit(0.2, 1, 0, 0), unit(1, 0.1, 0, 0), unit(0, 1, 0, 0),
                     unit(1, 0, 0.5, 0), unit(1, 0, 0.6, 0), unit(1, 0, 0, 0.3), unit(1, 0, 0, 2),
                     unit(0, 0, 1, 0)])


def miner(spec: str):
    return get_host().build("miner", spec)


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_the_database_quantities_are_what_the_docstring_says(db):
    assert [round(db.overlap(0, i), 3) for i in (1, 2, 3)] == [0.8, 0.3, 0.5]
    assert [round(db.scale_change(0, i), 3) for i in (1, 2, 3)] == [1.0, 2.0, 1.25]
    assert list(db.co_observing(6)) == []


def test_every_miner_declares_its_role_and_needs():
    roles = {name: miner(name).role for name in ("m1", "m2", "m3", "random-positive", "n1", "n2", "random-negative")}
    assert roles == {"m1": "positive", "m2": "positive", "m3": "positive", "random-positive": "positive",
                     "n1": "negative", "n2": "negative", "random-negative": "negative"}
    assert [miner(n).needs_descriptors for n in ("m1", "m2", "m3", "n1", "n2", "random-negative")] == \
        [True, False, False, True, True, False]
    assert miner("m2").needs_points and miner("m3").needs_points and not miner("m1").needs_points


def test_m1_picks_the_closest_descriptor_of_the_same_model(db, descriptors):
    # image 2 is closest to image 0 overall, and image 4 is closer than 1 or 3 but in model 1
    assert list(miner("m1").mine(np.array([0, 4, 6]), db, descriptors, rng())) == [2, 5, -1]


def test_m1_without_descriptors_says_what_to_do(db):
    with pytest.raises(Exception, match="extract"):
        miner("m1").mine(np.array([0]), db, None, rng())


def test_m2_picks_the_most_co_observed_image(db):
    # 8 shared points with image 1, 3 with image 2, 5 with image 3; image 4 shares 3 with image 5
    assert list(miner("m2").mine(np.array([0, 3, 4, 6]), db, None, rng())) == [1, 0, 5, -1]


def test_m3_respects_the_overlap_and_scale_thresholds(db):
    draws = {int(miner("m3").mine(np.array([0]), db, None, np.random.default_rng(s))[0]) for s in range(40)}
    assert draws == {1, 3}  # image 2: overlap 0.3 passes t_i=0.2 but scale 2.0 > 1.5
    strict_overlap = {int(miner("m3:t_i=0.6").mine(np.array([0]), db, None, np.random.default_rng(s))[0])
                      for s in range(20)}
    assert strict_overlap == {1}
    loose_scale = {int(miner("m3:t_s=2.5").mine(np.array([0]), db, None, np.random.default_rng(s))[0])
                   for s in range(60)}
    assert loose_scale == {1, 2, 3}
    assert list(miner("m3:t_i=0.9").mine(np.array([0]), db, None, rng())) == [-1]


def test_m3_is_repeatable_with_the_same_generator(db):
    queries = np.array([0, 1, 3, 0, 4])
    a = miner("m3").mine(queries, db, None, np.random.default_rng(7))
    b = miner("m3").mine(queries, db, None, np.random.default_rng(7))
    assert list(a) == list(b)


def test_m3_rejects_impossible_thresholds():
    with pytest.raises(Exception, match="t_s"):
        miner("m3:t_s=0.5")


def test_miners_needing_points_refuse_a_database_without_them(db):
    bare = TrainingDatabase(images=db.images, clusters=db.clusters)
    with pytest.raises(Exception, match="3D points"):
        miner("m2").mine(np.array([0]), bare, None, rng())
    # random-positive works without points: any other image of the model
    assert int(miner("random-positive").mine(np.array([6]), bare, None, rng())[0]) == 7


def test_random_positive_stays_in_m_of_q(db):
    picks = {int(miner("random-positive").mine(np.array([0]), db, None, np.random.default_rng(s))[0])
             for s in range(40)}
    assert picks == {1, 2, 3}


def test_n1_takes_the_nearest_images_of_other_models(db, descriptors):
    negatives = miner("n1").mine(np.array([0]), db, descriptors, 3, rng())
    assert negatives.tolist() == [[6, 4, 5]]  # 2 and 1 are nearer but in the query's model


def test_n2_takes_one_image_per_model(db, descriptors):
    negatives = miner("n2").mine(np.array([0]), db, descriptors, 3, rng())
    assert negatives.tolist() == [[6, 4, 8]]  # 5 (model 1) and 7 (model 2) repeat a model
    assert len(set(db.clusters[negatives[0]])) == 3


def test_n2_with_too_few_models_fills_with_the_next_nearest(db, descriptors):
    n2 = miner("n2")
    assert n2.mine(np.array([0]), db, descriptors, 4, rng()).tolist() == [[6, 4, 8, 5]]
    assert n2.last_filled == 1
    with pytest.raises(NotEnoughNegatives, match="3D models"):
        miner("n2:strict=true").mine(np.array([0]), db, descriptors, 4, rng())


def test_negatives_never_come_from_the_query_model(db, descriptors):
    queries = np.arange(9)
    for name in ("n1", "n2", "random-negative"):
        negatives = miner(name).mine(queries, db, descriptors, 3, rng())
        assert negatives.shape == (9, 3)
        assert (db.clusters[negatives] != db.clusters[queries][:, None]).all(), name
        assert all(len(set(row)) == 3 for row in negatives.tolist()), name


def test_many_queries_at_once_equal_one_at_a_time(db, descriptors):
    for name in ("n1", "n2"):
        together = miner(name).mine(np.array([0, 4, 8]), db, descriptors, 2, rng())
        alone = np.concatenate([miner(name).mine(np.array([q]), db, descriptors, 2, rng()) for q in (0, 4, 8)])
        assert together.tolist() == alone.tolist(), name


def test_the_pool_restricts_the_candidates(db, descriptors):
    assert miner("n1").mine(np.array([0]), db, descriptors, 2, rng(), pool=np.array([5, 7, 8])).tolist() == [[5, 7]]


def test_too_small_a_pool_is_a_clear_error(db, descriptors):
    with pytest.raises(NotEnoughNegatives, match="only 5 candidate"):
        miner("n1").mine(np.array([0]), db, descriptors, 6, rng())
    with pytest.raises(NotEnoughNegatives, match="num-negatives"):
        miner("random-negative").mine(np.array([0]), db, None, 3, rng(), pool=np.array([1, 2, 4, 5]))


def test_random_negatives_are_repeatable_per_seed(db):
    a = miner("random-negative").mine(np.arange(9), db, None, 2, np.random.default_rng(3))
    b = miner("random-negative").mine(np.arange(9), db, None, 2, np.random.default_rng(3))
    assert a.tolist() == b.tolist()


def test_nearest_neighbours_maps_back_to_database_indices(descriptors):
    sims, ids = nearest_neighbours(descriptors, np.array([0]), np.array([8, 7, 6]), 2)
    assert ids.tolist() == [[6, 7]]
    assert sims[0, 0] == pytest.approx(1 / np.sqrt(1.09), abs=1e-6)


def test_first_per_model_keeps_rank_order(db):
    ranked = np.array([[5, 4, 7, 6, 8, -1]])
    assert first_per_model(db, ranked, 4).tolist() == [[5, 7, 8, -1]]


def test_assemble_tuples_drops_queries_without_a_positive():
    tuples = assemble_tuples(np.array([0, 1, 2]), np.array([3, -1, 4]), np.array([[5, 6], [7, 8], [9, 10]]))
    assert tuples.tolist() == [[0, 3, 5, 6], [2, 4, 9, 10]]


def test_n2_searching_only_as_deep_as_needed_equals_ranking_the_whole_pool():
    from retrievalkit.mining import negatives_from_distinct_models, ranked_negatives

    generator = np.random.default_rng(5)
    clusters = np.repeat(np.arange(40), generator.integers(1, 30, size=40))
    vectors = generator.standard_normal((len(clusters), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    big = TrainingDatabase(images=[f"{i}.jpg" for i in range(len(clusters))], clusters=clusters)
    queries, pool = np.arange(0, len(clusters), 7), np.arange(len(clusters))
    for count in (1, 5, 39, 45):   # 45 > 39 other models: every query is short and gets filled
        whole = first_per_model(big, ranked_negatives(big, vectors, queries, pool, len(pool)), count)
        grown, short = negatives_from_distinct_models(big, vectors, queries, pool, count)
        assert grown.tolist() == whole.tolist(), count
        assert (len(short) == len(queries)) == (count > 39)
    mined = miner("n2").mine(queries, big, vectors, 45, rng())
    assert (mined >= 0).all() and all(len(set(row)) == 45 for row in mined.tolist())


def test_descriptor_rows_hold_only_the_extracted_images(db, descriptors):
    from retrievalkit.mining import DescriptorRows

    rows = DescriptorRows(np.array([0, 4, 6, 2]), descriptors[[0, 4, 6, 2]], len(db))
    assert rows.shape == descriptors.shape
    assert np.array_equal(rows[6], descriptors[6]) and np.array_equal(rows[np.array([2, 0])], descriptors[[2, 0]])
    with pytest.raises(Exception, match="did not extract"):
        rows[np.array([0, 5])]
    assert np.array_equal(np.asarray(rows)[4], descriptors[4]) and not np.asarray(rows)[5].any()
    # the miners take it where they take a dense matrix
    assert miner("n1").mine(np.array([0]), db, rows, 2, rng(), pool=np.array([4, 6])).tolist() == [[6, 4]]
    full = DescriptorRows(np.array([0, 1, 2, 3]), descriptors[:4], len(db))
    assert list(miner("m1").mine(np.array([0]), db, full, rng())) == [2]
