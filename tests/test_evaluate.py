"""Average precision, mP@k and the folder-collection protocol (SPEC section 5), by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retrievalkit.errors import RkitError
from retrievalkit.evaluate import (
    average_precision, evaluate_folder_collection, evaluate_rankings, folder_labels, precision_at_k,
    ranking_statistics, rankings_document,
)


# AP = (1/n_pos) * sum over positives k of (p_{k-1} + p_k) / 2, with r_k the 0-based rank of
# the k-th positive after junk removal, p_{k-1} = (k-1)/r_k (1 if r_k = 0), p_k = k/(r_k + 1).

def test_ap_with_junk_removed():
    # without junk j: a(r=0) b(r=1) x c(r=3)
    # k=1: (1 + 1/1)/2 = 1; k=2: (1/1 + 2/2)/2 = 1; k=3: (2/3 + 3/4)/2 = 17/24
    assert average_precision(list("ajbxc"), positives="abc", junk="j") == pytest.approx((1 + 1 + 17 / 24) / 3)
    assert average_precision(list("ajbxc"), positives="abc", junk="j") == pytest.approx(65 / 72)


def test_ap_when_junk_counts_as_negative():
    # a(r=0) j b(r=2) x c(r=4): 1, (1/2 + 2/3)/2 = 7/12, (2/4 + 3/5)/2 = 11/20
    assert average_precision(list("ajbxc"), positives="abc") == pytest.approx((1 + 7 / 12 + 11 / 20) / 3)
    assert average_precision(list("ajbxc"), positives="abc") == pytest.approx(32 / 45)


def test_ap_trapezoid_differs_from_non_interpolated():
    # a single positive at rank 1 (0-based): trapezoid (0/1 + 1/2)/2 = 1/4; the
    # non-interpolated AP would be 1/2
    assert average_precision(["x", "a"], positives=["a"]) == pytest.approx(0.25)


def test_positive_not_ranked_still_counts():
    # ranking [x, a], positives {a, b}: (0 + 1/2)/2 = 1/4, divided by 2 positives
    assert average_precision(["x", "a"], positives=["a", "b"]) == pytest.approx(1 / 8)


def test_junk_in_front_and_perfect_rankings():
    assert average_precision(["j", "a", "b"], positives=["a", "b"], junk=["j"]) == pytest.approx(1.0)
    assert average_precision([3, 1, 2], positives=[3]) == pytest.approx(1.0)
    assert average_precision([1, 2, 3], positives=[3]) == pytest.approx((0 / 2 + 1 / 3) / 2)


def test_positive_that_is_also_junk_counts_as_junk():
    assert average_precision(["x", "a", "b"], positives=["a", "b"], junk=["a"]) == pytest.approx(
        average_precision(["x", "b"], positives=["b"]))


def test_no_positives_gives_nan():
    assert math.isnan(average_precision(["a", "b"], positives=[]))
    assert math.isnan(average_precision(["a", "b"], positives=["a"], junk=["a"]))


def test_precision_at_k_is_capped_at_the_last_positive():
    ranking = ["a", "x", "b", "y", "z", "w"]
    assert precision_at_k(ranking, "ab", 1) == 1.0
    # last positive at rank 3 -> P@5 = 2/3 (plain P@5 would be 2/5)
    assert precision_at_k(ranking, "ab", 5) == pytest.approx(2 / 3)
    assert precision_at_k(ranking, "ab", 10) == pytest.approx(2 / 3)
    # more positives than k: plain precision at k (a, b, c, d in the top 5)
    assert precision_at_k(list("axbcde"), "abcdef", 5) == pytest.approx(4 / 5)
    # junk removed first: a, j, b -> a, b
    assert precision_at_k(["a", "j", "x", "b"], "ab", 2, junk="j") == pytest.approx(1 / 2)
    assert precision_at_k(["x", "y"], "ab", 5) == 0.0


def test_ranking_statistics_vectorised_matches_single_queries():
    rng = np.random.default_rng(0)
    is_positive = rng.random((30, 40)) < 0.2
    is_junk = (rng.random((30, 40)) < 0.1) & ~is_positive
    n_pos = is_positive.sum(axis=1) + rng.integers(0, 2, size=30)
    ap, prec = ranking_statistics(is_positive, is_junk, n_pos, ks=(1, 5))
    for q in range(30):
        ids = list(range(40))
        positives = [i for i in ids if is_positive[q, i]] + [1000 + i for i in range(n_pos[q] - is_positive[q].sum())]
        junk = [i for i in ids if is_junk[q, i]]
        expected = average_precision(ids, positives, junk)
        assert (math.isnan(ap[q]) and math.isnan(expected)) or ap[q] == pytest.approx(expected)
        if n_pos[q]:
            assert prec[q, 1] == pytest.approx(precision_at_k(ids, positives, 5, junk))


def folder_example():
    # A: v0, v1; B: v2, v3; C: v4 alone
    descriptors = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1], [-1, 0]], dtype=np.float32)
    return descriptors, ["A", "A", "B", "B", "C"]


def test_folder_collection_by_hand():
    descriptors, labels = folder_example()
    result = evaluate_folder_collection(descriptors, labels, names=[f"im{i}" for i in range(5)])
    # q0: v1 .8, v2 .6, v3 0, v4 -1 -> positive v1 first: AP 1
    # q1: v2 .96, v0 .8, v3 .6 -> positive v0 at r=1: (0 + 1/2)/2 = 1/4
    # q2: v1 .96, v3 .8 -> 1/4;  q3: v2 .8 first -> 1;  q4 (C) has no positive: left out
    assert result.rankings.tolist()[:2] == [[1, 2, 3, 4], [2, 0, 3, 4]]
    np.testing.assert_allclose(result.per_query_ap[:4], [1, 0.25, 0.25, 1])
    assert math.isnan(result.per_query_ap[4])
    assert result.map == pytest.approx(0.625)
    assert result.n_left_out == 1 and result.n_queries == 4
    assert result.mp_at_k[1] == pytest.approx(0.5)
    # P@5 capped at the last positive: q1 and q2 -> 1/2, q0 and q3 -> 1
    assert result.mp_at_k[5] == pytest.approx(0.75)
    assert result.per_class_ap["A"] == pytest.approx(0.625) and result.per_class_ap["B"] == pytest.approx(0.625)
    assert math.isnan(result.per_class_ap["C"])
    assert result.top_status[1].tolist() == [0, 1, 0, 0]
    np.testing.assert_allclose(result.top_scores[1], [0.96, 0.8, 0.6, -0.8], rtol=1e-6)
    summary = result.summary()
    assert summary["map"] == 0.625 and summary["per_class_ap"]["C"] is None and summary["n_queries"] == 4


def test_folder_collection_never_ranks_the_query_itself():
    descriptors = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (4, 1))   # all identical
    result = evaluate_folder_collection(descriptors, ["a", "a", "b", "b"])
    for q, row in enumerate(result.rankings):
        assert q not in row.tolist()
    # ties keep database order: q0 ranks [1, 2, 3]: AP 1; q2 ranks [0, 1, 3]: positive 3 at r=2
    assert result.per_query_ap[0] == pytest.approx(1.0)
    assert result.per_query_ap[2] == pytest.approx((0 / 2 + 1 / 3) / 2)


def test_folder_collection_errors():
    with pytest.raises(RkitError, match="one label per descriptor"):
        evaluate_folder_collection(np.zeros((3, 2)), ["a", "b"])
    with pytest.raises(RkitError, match="alone in its class"):
        evaluate_folder_collection(np.eye(3), ["a", "b", "c"])


def test_folder_labels():
    assert folder_labels(["lund/1.jpg", "a/b/c.png", "x.jpg", "C:\\data\\sacre\\1.jpg"]) == ["lund", "b", "", "sacre"]


def test_evaluate_rankings_with_missing_database_images_and_queries():
    # query 0: positives {0, 3}; image 3 failed to load so the ranking lacks it
    rankings = np.array([[0, 1, 2], [2, 1, 0]])
    result = evaluate_rankings(rankings, [[0, 3], [1]], [[], [2]], n_database=4, missing_queries=[1])
    assert result.per_query_ap[0] == pytest.approx(0.5)     # (1 + 1)/2 / 2 positives
    assert math.isnan(result.per_query_ap[1]) and result.map == pytest.approx(0.5)


def test_rankings_document():
    descriptors, labels = folder_example()
    paths = [f"{c}/{i}.jpg" for i, c in enumerate(labels)]
    result = evaluate_folder_collection(descriptors, labels, names=paths, top=2)
    doc = rankings_document({"all": result}, paths, paths, root="/data")
    assert doc["format"] == "rkit-rankings" and doc["primary"] == "all"
    assert doc["settings"]["all"]["n_queries"] == 4
    q1 = doc["settings"]["all"]["queries"][1]
    assert q1["query"] == "A/1.jpg" and q1["ap"] == 0.25 and q1["n_positives"] == 1
    assert [t["path"] for t in q1["top"]] == ["B/2.jpg", "A/0.jpg"]
    assert [t["status"] for t in q1["top"]] == ["negative", "positive"]
    assert q1["top"][0]["score"] == pytest.approx(0.96)


def test_ranking_statistics_in_blocks_equals_one_block(monkeypatch):
    import retrievalkit.metrics as evaluate_module

    rng = np.random.default_rng(1)
    is_positive, is_junk = rng.random((50, 30)) < 0.2, rng.random((50, 30)) < 0.1
    whole = ranking_statistics(is_positive, is_junk, is_positive.sum(axis=1))
    monkeypatch.setattr(evaluate_module, "_BLOCK_ENTRIES", 31)      # one query per block
    blocked = ranking_statistics(is_positive, is_junk, is_positive.sum(axis=1))
    np.testing.assert_allclose(blocked[0], whole[0])
    np.testing.assert_allclose(blocked[1], whole[1])
