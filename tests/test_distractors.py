"""The R1M protocol (retrievalkit/distractors.py): distractors are never relevant, AP is computed
on images + distractors, and the rankings come from a faiss index."""

from __future__ import annotations

import numpy as np
import pytest

from retrievalkit.datasets import RevisitedDataset
from retrievalkit.distractors import (cache_key, distractor_descriptors, evaluate_with_distractors,
                                      model_settings, parse_index_spec)
from retrievalkit.descriptors import DescriptorSet
from retrievalkit.errors import RkitError
from retrievalkit.evaluate import evaluate_revisited


def dataset() -> RevisitedDataset:
    """4 images, 1 query: positives 0 (easy) and 1 (hard), junk 2, negative 3."""
    gt = [{"easy": np.array([0]), "hard": np.array([1]), "junk": np.array([2])}]
    return RevisitedDataset("toy", None, [f"i{i}" for i in range(4)], ["q"], gt, [None])


def vectors(*rows: list[float]) -> np.ndarray:
    array = np.asarray(rows, dtype=np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


DATABASE = vectors([1, 0.1, 0, 0], [1, 0.6, 0, 0], [1, 0.3, 0, 0], [0, 0, 1, 0])   # sim to q: 0 > 2 > 1 > 3
QUERY = vectors([1, 0, 0, 0])


def test_far_distractors_change_nothing_near_ones_push_positives_down():
    plain = evaluate_revisited(dataset(), QUERY, DATABASE)
    far = vectors([0, 0, 0, 1], [0, 0, 0.2, 1])
    same = evaluate_with_distractors(dataset(), QUERY, DATABASE, far, query_ids=[0], database_ids=range(4))
    for setting in ("easy", "medium", "hard"):
        assert same[setting].map == pytest.approx(plain[setting].map)
    # one distractor more similar than everything: medium positives 0, 1 at ranks 2 and 4, junk 2 removed
    near = vectors([1, 0.01, 0, 0])
    pushed = evaluate_with_distractors(dataset(), QUERY, DATABASE, near, query_ids=[0], database_ids=range(4))
    # ranking: d(4), 0, 2 (junk), 1, 3 -> positives at junk-free ranks 1 and 2 (0-based); the revisited
    # AP (trapezoid, docs/definitions.md §5): 1/2 * (0 + 1/2)/2 + 1/2 * (1/2 + 2/3)/2
    assert pushed["medium"].map == pytest.approx(0.5 * (0 + 1 / 2) / 2 + 0.5 * (1 / 2 + 2 / 3) / 2)
    assert pushed["medium"].rankings[0, 0] == 4          # distractor ids follow the dataset's images
    assert plain["medium"].map == pytest.approx(1.0)


def test_approximate_index_options_and_errors():
    rng = np.random.default_rng(0)
    distractors = vectors(*rng.standard_normal((300, 4)).tolist())
    exact = evaluate_with_distractors(dataset(), QUERY, DATABASE, distractors, query_ids=[0], database_ids=range(4))
    ivf = evaluate_with_distractors(dataset(), QUERY, DATABASE, distractors, query_ids=[0], database_ids=range(4),
                                    index="ivf:nlist=4:nprobe=4")           # visiting every cell: exact
    assert ivf["medium"].map == pytest.approx(exact["medium"].map)
    assert parse_index_spec("ivfpq:nlist=8192:pq_m=64:nprobe=64") == ("ivfpq", {"nlist": 8192, "pq_m": 64, "nprobe": 64})
    with pytest.raises(RkitError, match="KIND"):
        parse_index_spec("ivf:cells=3")
    with pytest.raises(RkitError, match="same model"):
        evaluate_with_distractors(dataset(), QUERY, DATABASE, np.ones((2, 3), np.float32), query_ids=[0],
                                  database_ids=range(4))


def test_descriptors_are_extracted_once_per_model(tmp_path):
    (tmp_path / "r1m").mkdir()
    (tmp_path / "r1m" / "r1m.txt").write_text("a.jpg\nb.jpg\n")
    calls = []

    def extract(paths, root, checkpoint):
        calls.append((tuple(paths), root, checkpoint.name))
        return DescriptorSet(np.eye(2, 4, dtype=np.float32), list(paths), {"model": {"backbone": "x"}})

    first = model_settings("resnet50", "gem", "imagenet", None, None, 1024, [1.0])
    other = model_settings("resnet50", "mac", "imagenet", None, None, 1024, [1.0])
    assert cache_key(first) != cache_key(other)
    got = distractor_descriptors(tmp_path, "r1m", first, extract, log=lambda m: None)
    again = distractor_descriptors(tmp_path, "r1m", first, extract, log=lambda m: None)
    assert len(calls) == 1 and calls[0][0] == ("a.jpg", "b.jpg") and calls[0][1] == tmp_path / "r1m" / "jpg"
    assert calls[0][2].endswith(".partial.npz")                         # resumable extraction
    np.testing.assert_array_equal(got.descriptors, again.descriptors)
    distractor_descriptors(tmp_path, "r1m", other, extract, log=lambda m: None)
    assert len(calls) == 2 and len(list((tmp_path / "r1m" / "descriptors").glob("*.npz"))) == 2
    with pytest.raises(RkitError, match="rkit data download missing"):
        distractor_descriptors(tmp_path, "missing", first, extract)


@pytest.mark.filterwarnings("ignore:training the ivf index")
def test_rerank_with_distractors_equals_rerank_over_the_combined_database():
    """dba+aqe on images + distractors (R1M with re-ranking) is the chain run on the concatenation."""
    from retrievalkit.distractors import rank_with_distractors
    from retrievalkit.rerank import rank

    rng = np.random.default_rng(1)
    distractors = vectors(*rng.standard_normal((40, 4)).tolist())
    queries = vectors(*rng.standard_normal((3, 4)).tolist())
    combined = np.concatenate([DATABASE, distractors])
    for chain in ("aqe:k=2:alpha=3", "dba:k=2+aqe:k=3:alpha=1"):
        ids, scores = rank_with_distractors(queries, DATABASE, distractors, rerank=chain, top=10)
        expected_ids, expected_scores = rank(combined, queries, chain)
        np.testing.assert_array_equal(ids, expected_ids[:, :10])
        np.testing.assert_allclose(scores, expected_scores[:, :10], rtol=1e-5, atol=1e-6)
    plain_ids, _ = rank_with_distractors(queries, DATABASE, distractors, top=10)
    assert not np.array_equal(plain_ids, rank_with_distractors(queries, DATABASE, distractors, rerank="dba", top=10)[0])
    # an approximate index that visits every cell gives the exact result, and the evaluation takes the chain
    ivf_ids, _ = rank_with_distractors(queries, DATABASE, distractors, rerank="dba+aqe", top=10,
                                       index="ivf:nlist=4:nprobe=4")
    np.testing.assert_array_equal(ivf_ids, rank(combined, queries, "dba+aqe")[0][:, :10])
    reranked = evaluate_with_distractors(dataset(), QUERY, DATABASE, distractors, query_ids=[0],
                                         database_ids=range(4), rerank="aqe")
    assert 0 <= reranked["medium"].map <= 1
