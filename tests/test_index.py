"""faiss index building and search against numpy brute force (retrievalkit.index)."""

from __future__ import annotations

import numpy as np
import pytest

from retrievalkit.errors import RkitError
from retrievalkit.index import build_index, default_nlist, load_index, rank_all, save_index, search


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_search_equals_numpy_brute_force():
    database, queries = unit_rows(500, 32, 0), unit_rows(20, 32, 1)
    scores, ids = search(build_index(database), queries, k=7)
    similarity = queries @ database.T
    expected_ids = np.argsort(-similarity, axis=1)[:, :7]
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, np.take_along_axis(similarity, expected_ids, 1), rtol=1e-5, atol=1e-6)
    assert ids.dtype == np.int64 and scores.shape == (20, 7)


def test_search_on_a_hand_made_database():
    database = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    scores, ids = search(build_index(database), np.array([[0.8, 0.6]], dtype=np.float32), k=5)
    # 0.8*1 = 0.8, 0.8*0.6 + 0.6*0.8 = 0.96, 0.6  -> k is clipped to the 3 vectors
    assert ids.tolist() == [[2, 0, 1]]
    np.testing.assert_allclose(scores, [[0.96, 0.8, 0.6]], rtol=1e-6)


def test_rank_all_full_rankings_and_self_exclusion():
    database = np.array([[1, 0], [0.8, 0.6], [0, 1]], dtype=np.float32)
    assert rank_all(database, np.array([[0, 1]], dtype=np.float32)).tolist() == [[2, 1, 0]]
    ranking = rank_all(database, database, exclude_self=True)
    assert ranking.shape == (3, 2)
    assert ranking.tolist() == [[1, 2], [0, 2], [1, 0]]


def test_rank_all_blocks_agree_with_one_block(monkeypatch):
    import retrievalkit.index as index_module

    database, queries = unit_rows(300, 16, 2), unit_rows(50, 16, 3)
    whole = rank_all(database, queries)
    original = index_module._query_blocks
    monkeypatch.setattr(index_module, "_query_blocks", lambda q, n: original(q, n, budget=7 * n))
    np.testing.assert_array_equal(rank_all(database, queries), whole)
    np.testing.assert_array_equal(whole, np.argsort(-(queries @ database.T), axis=1, kind="stable"))


def test_ivf_recall_on_random_data():
    database = unit_rows(4000, 32, 4)
    queries = database[:200] + 0.05 * unit_rows(200, 32, 5)
    truth = np.argsort(-(queries @ database.T), axis=1)[:, :10]
    index = build_index(database, "ivf", nlist=32, nprobe=8)
    _, ids = search(index, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), truth.tolist())])
    assert recall > 0.5            # visiting 8 of 32 cells finds most neighbours
    _, exact = search(index, queries, 10, nprobe=32)  # visiting every cell is exact
    np.testing.assert_array_equal(exact, truth)


def test_ivfpq_finds_the_query_itself():
    database = unit_rows(1000, 32, 6)
    with pytest.warns(UserWarning, match="recommends at least"):
        index = build_index(database, "ivfpq", nlist=8, pq_m=4, nprobe=8)
    _, ids = search(index, database[:50], 1)
    assert np.mean(ids[:, 0] == np.arange(50)) > 0.9


def test_too_few_vectors_for_ivf_says_how_many():
    with pytest.raises(RkitError, match=r"needs at least 100 training vectors.*only 40.*--nlist"):
        build_index(unit_rows(40, 8), "ivf", nlist=100)
    with pytest.raises(RkitError, match=r"at least 256 training vectors.*only 100"):
        build_index(unit_rows(100, 8), "ivfpq", nlist=2, pq_m=4)
    with pytest.raises(RkitError, match="does not divide the descriptor dimension 10"):
        build_index(unit_rows(300, 10), "ivfpq", nlist=2, pq_m=4)
    with pytest.raises(RkitError, match="unknown index kind 'hnsw'"):
        build_index(unit_rows(10, 8), "hnsw")


def test_dimension_mismatch_is_a_clear_error():
    index = build_index(unit_rows(10, 8))
    with pytest.raises(RkitError, match="queries have 4 dimensions but the index 8"):
        search(index, unit_rows(2, 4), 3)


def test_default_nlist():
    assert default_nlist(10) == 1
    assert default_nlist(10_000) == 256       # 39 * 256 = 9984 <= 10000, 4*sqrt = 400
    assert default_nlist(1_000_000) == 4000


def test_save_and_load_index(tmp_path):
    database = unit_rows(400, 16, 7)
    index = build_index(database, "ivf", nlist=4, nprobe=4)
    path = save_index(index, tmp_path / "db.faiss")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.faiss"]
    loaded = load_index(path, expected_size=400, expected_dim=16)
    np.testing.assert_array_equal(search(loaded, database[:5], 3)[1], search(index, database[:5], 3)[1])
    with pytest.raises(RkitError, match="holds 400 vectors but the descriptors file has 401"):
        load_index(path, expected_size=401)
    with pytest.raises(RkitError, match="does not exist"):
        load_index(tmp_path / "missing.faiss")
    (tmp_path / "bad.faiss").write_bytes(b"not an index")
    with pytest.raises(RkitError, match="not a faiss index"):
        load_index(tmp_path / "bad.faiss")
