"""Re-rankers (the sixth kind of component): alpha-QE and DBA by hand, chains, caching, plugins."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from retrievalkit.ablate import expand_grid, parse_grid
from retrievalkit.cli import main
from retrievalkit.descriptors import DescriptorSet
from retrievalkit.errors import UnknownComponentError
from retrievalkit.evaluate import evaluate_folder_collection, folder_labels
from retrievalkit.plugins import get_host
from retrievalkit.rerank import RerankChain, rank

# x0 = (1, 0), x1 = (0.8, 0.6), x2 = (0, 1): x0.x1 = 0.8, x1.x2 = 0.6, x0.x2 = 0
X = np.array([[1, 0], [0.8, 0.6], [0, 1]], dtype=np.float32)


def unit(v) -> list[float]:
    v = np.asarray(v, dtype=np.float64)
    return (v / np.linalg.norm(v)).tolist()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RKIT_CACHE", str(tmp_path / "cache"))
    import retrievalkit.rerank as rerank_module

    monkeypatch.setattr(rerank_module, "_MEMORY_CACHE", {})


def test_alpha_query_expansion_by_hand():
    q = np.array([[0.6, 0.8]], dtype=np.float32)
    # similarities: x0 0.6, x1 0.48 + 0.48 = 0.96, x2 0.8 -> the top 2 are x1, x2
    chain = RerankChain("aqe:k=2:alpha=3")
    expanded = chain.transform_queries(q, X)
    w1, w2 = 0.96 ** 3, 0.8 ** 3
    expected = unit([0.6 + w1 * 0.8, 0.8 + w1 * 0.6 + w2 * 1.0])
    np.testing.assert_allclose(expanded[0], expected, rtol=1e-5)
    # alpha = 0: average query expansion, each of q, x1, x2 weighted 1
    np.testing.assert_allclose(RerankChain("aqe:k=2:alpha=0").transform_queries(q, X)[0],
                               unit([0.6 + 0.8 + 0, 0.8 + 0.6 + 1]), rtol=1e-5)
    # a negative similarity adds nothing (max(s, 0)^alpha), even with a non-integer alpha
    neg = np.array([[-1, 0]], dtype=np.float32)         # top 1 = x2 with similarity 0
    np.testing.assert_allclose(RerankChain("aqe:k=1:alpha=2.5").transform_queries(neg, X)[0], [-1, 0], atol=1e-6)


def test_database_side_augmentation_by_hand():
    augmented = RerankChain("dba:k=1:alpha=1").transform_database(X)
    # x0: nearest other x1 (0.8); x1: x0 (0.8); x2: x1 (0.6) -- itself never counts as a neighbour
    expected = [unit([1 + 0.8 * 0.8, 0.8 * 0.6]), unit([0.8 + 0.8 * 1, 0.6]), unit([0.6 * 0.8, 1 + 0.6 * 0.6])]
    np.testing.assert_allclose(augmented, expected, rtol=1e-5)
    twice = RerankChain("dba:k=2:alpha=3").transform_database(X)
    x1 = unit([0.8 + 0.8 ** 3 * 1 + 0.6 ** 3 * 0, 0.6 + 0.8 ** 3 * 0 + 0.6 ** 3 * 1])
    np.testing.assert_allclose(twice[1], x1, rtol=1e-5)


def test_dba_then_aqe_searches_the_augmented_database_and_ranks():
    q = np.array([[0.6, 0.8]], dtype=np.float32)
    chain = RerankChain("aqe:k=1:alpha=1+dba:k=1:alpha=1")    # database steps run first anyway
    db = chain.transform_database(X)
    expanded = chain.transform_queries(q, db)
    nearest = int(np.argmax(db @ q[0]))
    s = float(db[nearest] @ q[0])
    np.testing.assert_allclose(expanded[0], unit(q[0] + s * db[nearest]), rtol=1e-5)
    rankings, scores = rank(X, q, chain)
    assert rankings.tolist() == np.argsort(-(db @ expanded[0]), kind="stable")[None].tolist()
    np.testing.assert_allclose(scores[0], np.sort(db @ expanded[0])[::-1], rtol=1e-5)   # re-ranked scores
    assert str(chain) == "aqe:alpha=1:k=1+dba:alpha=1:k=1"


def test_dba_is_computed_once_per_database_and_options(monkeypatch, tmp_path):
    from retrievalkit_builtins.rerankers import dba

    calls = []
    original = dba.DatabaseAugmentation.augment_database
    monkeypatch.setattr(dba.DatabaseAugmentation, "augment_database",
                        lambda self, d, n: calls.append(1) or original(self, d, n))
    first = RerankChain("dba").transform_database(X)
    again = RerankChain("dba:k=2:alpha=3.0").transform_database(X)   # the same resolved options
    assert len(calls) == 1 and np.array_equal(first, again)
    import retrievalkit.rerank as rerank_module

    rerank_module._MEMORY_CACHE.clear()                          # a new process: the file cache
    RerankChain("dba").transform_database(X)
    assert len(calls) == 1 and len(list((tmp_path / "cache" / "rerank").glob("*.npy"))) == 1
    RerankChain("dba:k=1").transform_database(X)
    RerankChain("dba").transform_database(X[::-1].copy())
    assert len(calls) == 3


def test_folder_evaluation_with_reranking_leaves_each_query_out():
    x = np.array([[1, 0], [0.9, 0.436], [0, 1], [0.2, 0.98]], dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = ["a", "a", "b", "b"]
    for spec in ("aqe", "dba", "dba+aqe"):
        result = evaluate_folder_collection(x, labels, rerank=spec)
        assert result.rankings.shape == (4, 3) and result.map == pytest.approx(1.0)
        assert all(i not in row for i, row in enumerate(result.rankings.tolist()))


def test_unknown_reranker_is_a_clear_error():
    with pytest.raises(UnknownComponentError, match="unknown reranker 'aqx'. Did you mean 'aqe'"):
        RerankChain("aqx")
    assert RerankChain("none").steps == [] and not RerankChain("none+none")


def test_ablation_grid_axis_rerank():
    cells = expand_grid({}, parse_grid(["rerank=none,aqe,dba+aqe"]))
    assert [c.settings.get("rerank") for c in cells] == [None, "aqe", "dba+aqe"]
    assert "rerank" not in cells[0].settings                    # cell ids of older grids unchanged


def test_ablation_cell_evaluates_with_its_rerank_setting():
    from retrievalkit.ablate import DEFAULT_SETTINGS, _Collection, evaluate_cell

    rng = np.random.default_rng(5)
    x = rng.normal(size=(12, 6)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    paths = [f"{c}/{i}.jpg" for i, c in enumerate("aaabbbcccddd")]
    collection = _Collection(x, paths, folder_labels(paths), 0.0, False)
    for spec in ("none", "dba+aqe"):
        numbers = evaluate_cell({**DEFAULT_SETTINGS, "rerank": spec}, collection, None)
        expected = evaluate_folder_collection(x, folder_labels(paths), rerank=spec)
        assert numbers["map"] == pytest.approx(expected.map, abs=1e-6)


def test_rkit_eval_and_search_with_rerank(tmp_path, capsys):
    x = np.array([[1, 0], [0.9, 0.436], [0, 1], [0.2, 0.98], [0.7, 0.7]], dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    paths = ["a/0.jpg", "a/1.jpg", "b/2.jpg", "b/3.jpg", "b/4.jpg"]
    db = DescriptorSet(x, paths).save(tmp_path / "db.npz")
    main(["eval", str(db), "--rerank", "dba+aqe:k=1", "--json"])
    report = json.loads(capsys.readouterr().out)
    expected = evaluate_folder_collection(x, folder_labels(paths), rerank="dba+aqe:k=1")
    assert report["map"] == pytest.approx(expected.map, abs=1e-6)
    main(["search", str(db), str(db), "-k", "2", "--rerank", "aqe:k=1:alpha=1", "--format", "json"])
    document = json.loads(capsys.readouterr().out)
    assert document["rerank"] == "aqe:alpha=1:k=1"
    q = RerankChain("aqe:k=1:alpha=1").transform_queries(x, x)
    top = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :2]
    assert [[n["path"] for n in r["neighbours"]] for r in document["results"]] == \
        [[paths[i] for i in row] for row in top.tolist()]


THIRD_PARTY = '''
"""Average query expansion (Chum et al. ICCV 2007), written by a third party."""
import numpy as np
from retrievalkit import Component, hookimpl


class MeanExpansion:
    def __init__(self, k: int = 1):
        self.k = k

    def expand_queries(self, queries, neighbours, self_rows):
        scores, ids = neighbours(queries, self.k, self_rows)
        summed = queries + np.where(ids[..., None] < 0, 0, neighbours.rows(ids)).sum(axis=1)
        return summed / np.linalg.norm(summed, axis=1, keepdims=True)


@hookimpl
def rkit_rerankers():
    return [Component("meanqe", MeanExpansion, "average query expansion", "Chum et al. ICCV 2007")]
'''


def test_a_third_party_reranker_is_listed_and_used_by_rkit_eval(install_fake_plugin, tmp_path, capsys):
    install_fake_plugin("rkit-meanqe", "rerankers.meanqe", "rkit_meanqe", THIRD_PARTY)
    assert get_host().get("reranker", "meanqe").distribution == "rkit-meanqe"
    main(["plugins"])
    listing = capsys.readouterr().out
    assert "rerankers" in listing and "meanqe" in listing and "rkit-meanqe" in listing
    rng = np.random.default_rng(3)
    x = rng.normal(size=(12, 6)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    paths = [f"{c}/{i}.jpg" for i, c in enumerate("aaabbbcccddd")]
    db = DescriptorSet(x, paths).save(tmp_path / "db.npz")
    main(["eval", str(db), "--rerank", "meanqe:k=2", "--json"])
    report = json.loads(capsys.readouterr().out)
    # the same formula as the built-in alpha-QE with alpha = 0
    same = evaluate_folder_collection(x, folder_labels(paths), rerank="aqe:k=2:alpha=0")
    plain = evaluate_folder_collection(x, folder_labels(paths))
    assert report["map"] == pytest.approx(same.map, abs=1e-6)
    assert not math.isclose(same.map, plain.map)
