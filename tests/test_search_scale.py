"""Search at scale: descriptor stores, saved sharded indexes with exact re-ranking, rkit index."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from clirun import run, run_error
from retrievalkit.descriptors import DescriptorSet
from retrievalkit.errors import RkitError
from retrievalkit.index import merge_top_k, rerank_exact
from retrievalkit.searchindex import IndexParams, SearchIndex
from retrievalkit.store import ArraySource, NpzSource, ShardStore, ShardWriter, open_descriptors


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """faiss' OpenMP threads spin against each other on a busy 2-core machine (OPQ: 0.5 s -> 18 s)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def names(n: int, start: int = 0) -> list[str]:
    return [f"img/{i}.jpg" for i in range(start, start + n)]




@pytest.fixture
def data(tmp_path):
    x = unit_rows(1200, 16, 0)
    queries = unit_rows(30, 16, 1)
    db = DescriptorSet(x, names(1200), {"root": "/photos"}).save(tmp_path / "db.npz")
    return x, queries, db


def exact_top(x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ x.T), axis=1, kind="stable")[:, :k]


# -- stores ------------------------------------------------------------------------------------------
def test_npz_is_memory_mapped_and_paths_are_read_on_demand(data):
    x, _, db = data
    source = open_descriptors(db)
    assert isinstance(source, NpzSource) and isinstance(source._descriptors, np.memmap)
    assert (source.count, source.dim) == (1200, 16)
    assert source.paths_at([3, 1199]) == ["img/3.jpg", "img/1199.jpg"]
    np.testing.assert_array_equal(source.rows(np.array([[5, 2], [0, 7]])), x[[[5, 2], [0, 7]]])
    assert source.meta == {"format_version": 1, "root": "/photos"}


def test_store_append_blocks_and_fingerprint(tmp_path, data):
    x, _, db = data
    writer = ShardWriter(tmp_path / "store")
    writer.append(x[:500], names(500))
    writer.append(x[500:], names(700, 500))
    store = open_descriptors(tmp_path / "store")
    assert isinstance(store, ShardStore) and store.count == 1200 and len(store.shards) == 2
    np.testing.assert_array_equal(np.concatenate([b for _, b in store.blocks(block_rows=333)]), x)
    np.testing.assert_array_equal(store.rows(np.array([499, 500, 1199, 0])), x[[499, 500, 1199, 0]])
    assert store.paths_at([499, 500]) == ["img/499.jpg", "img/500.jpg"]
    # same rows and paths in another layout: the same fingerprint; one changed value: another
    assert store.fingerprint() == open_descriptors(db).fingerprint()
    changed = x.copy()
    changed[10, 3] += 0.5
    assert ArraySource(changed, store).fingerprint() != store.fingerprint()
    # a shard written but never committed (no manifest entry) is not part of the store
    (tmp_path / "store" / "shard-00002.npy").write_bytes(b"half a shard")
    assert open_descriptors(tmp_path / "store").count == 1200
    with pytest.raises(RkitError, match="cannot append 8-D"):
        ShardWriter(tmp_path / "store", dim=8)


def test_float16_store(tmp_path, data):
    x, _, _ = data
    ShardWriter(tmp_path / "half", dtype="float16").append(x, names(1200))
    store = open_descriptors(tmp_path / "half")
    assert store.rows(np.array([0])).dtype == np.float32
    np.testing.assert_allclose(store.matrix(), x, atol=1e-3)


# -- exact re-ranking, shards ------------------------------------------------------------------------
def test_reranked_ivfpq_is_exact_when_the_shortlist_covers_the_database(data):
    x, queries, db = data
    params = IndexParams(kind="ivfpq", nlist=8, pq_m=4, nprobe=8, rerank_k=1200)
    with pytest.warns(UserWarning, match="expect lower recall"):
        index = SearchIndex.build(db, params)
    scores, ids = index.search(queries, 10)
    np.testing.assert_array_equal(ids, exact_top(x, queries, 10))
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ x.T, ids, 1), rtol=1e-5)
    _, approx = index.search(queries, 10, rerank_k=0)             # the codes alone are not exact
    assert (approx != ids).any()


def test_the_default_shortlist_grows_with_the_database():
    from retrievalkit.searchindex import default_rerank_k

    assert [default_rerank_k(n) for n in (10, 1_000_000, 10_000_000, 100_000_000)] == [400, 400, 1265, 4000]
    params = IndexParams(kind="ivfpq")
    assert params.shortlist(10, count=10_000_000) == 1265 and params.shortlist(10, 50, 10_000_000) == 50
    assert IndexParams(kind="flat").shortlist(10, count=10_000_000) == 0
    assert IndexParams(kind="ivfpq", rerank_k=0).shortlist(10, count=10_000_000) == 0


def test_rerank_exact_and_merge_by_hand():
    database = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    query = np.array([[0.8, 0.6]], dtype=np.float32)
    scores, ids = rerank_exact(query, np.array([[1, -1, 2, 0]]), lambda i: database[i], k=3)
    assert ids.tolist() == [[2, 0, 1]]                          # 0.96, 0.8, 0.6; -1 dropped
    np.testing.assert_allclose(scores, [[0.96, 0.8, 0.6]], rtol=1e-6)
    merged = merge_top_k([(np.array([[0.9, 0.1]]), np.array([[4, 2]])),
                          (np.array([[0.9, 0.5]]), np.array([[1, 7]]))], k=3)
    assert merged[1].tolist() == [[1, 4, 7]]                    # the tie goes to the lower id


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_shard_merge_equals_the_unsharded_search(data, kind):
    x, queries, db = data
    params = IndexParams(kind=kind, nlist=8, pq_m=4, nprobe=3, rerank_k=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # few training vectors for ivfpq: fine here
        whole = SearchIndex.build(db, params)
        sharded = SearchIndex.build(db, params, shards=3)
    assert [e["count"] for e in sharded.manifest["shards"]] == [400, 400, 400]
    s1, i1 = whole.search(queries, 10)
    s3, i3 = sharded.search(queries, 10)
    if kind == "flat":
        np.testing.assert_array_equal(i3, i1)
        np.testing.assert_array_equal(i1, exact_top(x, queries, 10))
    else:   # every shard shortlists at least what the whole index shortlists from it
        assert (s3 >= s1 - 1e-6).all()
    # searching the shards in two groups and merging gives the same as all at once
    parts = [sharded.search(queries, 10, shard_ids=[0, 2]), sharded.search(queries, 10, shard_ids=[1])]
    np.testing.assert_array_equal(merge_top_k(parts, 10)[1], i3)


def test_opq_index_saves_and_reloads(tmp_path, data):
    x, queries, db = data
    index = SearchIndex.build(db, IndexParams(kind="ivfpq", nlist=4, pq_m=4, nbits=4, opq=True, nprobe=4, rerank_k=1200,
                                              train_size=1000))
    assert index.manifest["faiss"] == "IndexPreTransform" and index.params.opq
    index.save(tmp_path / "db.index")
    loaded = SearchIndex.load(tmp_path / "db.index")
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], exact_top(x, queries, 5))


# -- saved indexes: refusals, no float matrix loaded, adding -----------------------------------------
def test_a_saved_index_refuses_descriptors_it_was_not_built_from(tmp_path, data):
    x, _, db = data
    SearchIndex.build(db).save(tmp_path / "db.index")
    other = x.copy()
    other[[3, 4]] = other[[4, 3]]                                   # same size, other content
    DescriptorSet(other, names(1200)).save(tmp_path / "other.npz")
    with pytest.raises(RkitError, match="fingerprint mismatch"):
        SearchIndex.load(tmp_path / "db.index", tmp_path / "other.npz")
    DescriptorSet(x[:1199], names(1199)).save(tmp_path / "short.npz")
    with pytest.raises(RkitError, match="holds 1200 vectors but the descriptors file has 1199"):
        SearchIndex.load(tmp_path / "db.index", tmp_path / "short.npz")
    DescriptorSet(x[:, :8], names(1200)).save(tmp_path / "narrow.npz")
    with pytest.raises(RkitError, match="has dimension 16 but the descriptors"):
        SearchIndex.load(tmp_path / "db.index", tmp_path / "narrow.npz")
    with pytest.raises(RkitError, match="is not a saved index"):
        SearchIndex.load(tmp_path / "nothing")


def test_searching_a_saved_index_memory_maps_and_reads_only_shortlisted_rows(tmp_path, data, monkeypatch):
    x, queries, db = data
    with pytest.warns(UserWarning):
        SearchIndex.build(db, IndexParams(kind="ivfpq", nlist=8, pq_m=4, nprobe=8, rerank_k=50)).save(tmp_path / "i")
    monkeypatch.setattr(NpzSource, "matrix", lambda self: pytest.fail("the float matrix was loaded"))
    monkeypatch.setattr(NpzSource, "all_paths", lambda self: pytest.fail("every path was decoded"))
    read = []
    original = NpzSource._gather
    monkeypatch.setattr(NpzSource, "_gather", lambda self, ids: read.append(ids.size) or original(self, ids))
    index = SearchIndex.load(tmp_path / "i")
    read.clear()
    index.search(queries, 5)
    assert sum(read) == len(queries) * 50                          # the shortlists only


def test_rkit_index_build_add_and_search_cli(tmp_path, data, capsys):
    x, queries, _ = data
    ShardWriter(tmp_path / "db.store").append(x[:1000], names(1000))
    DescriptorSet(x[1000:], names(200, 1000)).save(tmp_path / "new.npz")
    DescriptorSet(queries, [f"q{i}" for i in range(30)]).save(tmp_path / "q.npz")
    run("index", "build", tmp_path / "db.store", "--index", "ivf", "--nlist", "8", "--nprobe", "8",
        "--shards", "2", "--out", tmp_path / "db.index", "--no-progress")
    assert "ivf index of 1000 16-D vectors in 2 shard(s)" in capsys.readouterr().out
    run("index", "add", tmp_path / "db.index", tmp_path / "new.npz", "--no-progress")
    assert "added 200 vectors: ivf index of 1200 16-D vectors in 3 shard(s)" in capsys.readouterr().out
    run("search", tmp_path / "db.store", tmp_path / "q.npz", "--load-index", tmp_path / "db.index", "-k", "3",
        "--format", "json", "--out", tmp_path / "hits.json")
    document = json.loads((tmp_path / "hits.json").read_text())
    expected = exact_top(x, queries, 3)
    assert [[n["path"] for n in r["neighbours"]] for r in document["results"]] == \
        [[f"img/{i}.jpg" for i in row] for row in expected.tolist()]
    # two "servers" each search some shards; the merge is the whole search
    for part, shards in (("a", "0,2"), ("b", "1")):
        run("search", tmp_path / "db.store", tmp_path / "q.npz", "--load-index", tmp_path / "db.index",
            "--use-shards", shards, "-k", "3", "--format", "npz", "--out", tmp_path / f"{part}.npz")
    run("index", "merge", tmp_path / "a.npz", tmp_path / "b.npz", "-k", "3", "--format", "json",
        "--out", tmp_path / "merged.json")
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged["results"] == document["results"]
    capsys.readouterr()
    DescriptorSet(x[:2, :8], ["a", "b"]).save(tmp_path / "narrow.npz")
    assert "cannot append 8-D" in run_error(capsys, "index", "add", tmp_path / "db.index", tmp_path / "narrow.npz")


def test_rkit_extract_format_shards_appends(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / name)
    args = ["extract", tmp_path / "a.png", "--backbone", "alexnet", "--weights", "none", "--image-size", "32",
            "--workers", "0", "--device", "cpu", "--no-progress", "--format", "shards", "--out", tmp_path / "s"]
    run(*args)
    run(*args[:1], tmp_path / "b.png", *args[2:])
    store = open_descriptors(tmp_path / "s")
    assert store.count == 2 and len(store.shards) == 2 and store.paths_at([0, 1]) == ["a.png", "b.png"]
    assert store.meta["model"]["backbone"] == "alexnet"


def test_rkit_eval_reads_a_store_like_a_descriptors_file(tmp_path, capsys):
    x = unit_rows(12, 8, 4)
    paths = [f"{c}/{i}.jpg" for i, c in enumerate("aaabbbcccddd")]
    DescriptorSet(x, paths).save(tmp_path / "db.npz")
    writer = ShardWriter(tmp_path / "db.store")
    writer.append(x[:5], paths[:5])
    writer.append(x[5:], paths[5:])
    reports = []
    for source in ("db.npz", "db.store"):
        run("eval", tmp_path / source, "--json")
        reports.append(json.loads(capsys.readouterr().out))
    assert reports[1]["images"] == 12 and reports[1]["map"] == reports[0]["map"]


def test_dba_index_is_saved_with_its_augmented_database_and_searched_like_in_memory(tmp_path, data, capsys,
                                                                                    monkeypatch):
    """--rerank dba with --save-index/--load-index gives the in-memory dba+aqe results; mismatches are refused."""
    from retrievalkit.rerank import RerankChain

    monkeypatch.setenv("RKIT_CACHE", str(tmp_path / "cache"))
    x, queries, db = data
    DescriptorSet(queries, [f"q{i}" for i in range(30)]).save(tmp_path / "q.npz")
    search = ["search", db, tmp_path / "q.npz", "-k", "4", "--format", "json"]
    run("index", "build", db, "--rerank", "dba", "--out", tmp_path / "dba.index", "--no-progress")
    assert "flat index of 1200 16-D vectors in 1 shard(s) after dba:alpha=3:k=2" in capsys.readouterr().out
    assert not (tmp_path / "cache" / "rerank").exists()          # the index keeps it; no second copy
    run(*search, "--rerank", "dba+aqe", "--out", tmp_path / "memory.json")
    assert len(list((tmp_path / "cache" / "rerank").glob("*.npy"))) == 1   # in memory: cached for the next search
    run(*search, "--rerank", "dba+aqe", "--load-index", tmp_path / "dba.index", "--out", tmp_path / "saved.json")
    memory, saved = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("memory", "saved"))
    assert saved["results"] == memory["results"]
    chain = RerankChain("dba+aqe")                                  # and both are the chain's exact ranking
    augmented = chain.transform_database(x)
    expected = exact_top(augmented, chain.transform_queries(queries, augmented), 4)
    assert [[n["path"] for n in r["neighbours"]] for r in saved["results"]] == \
        [[f"img/{i}.jpg" for i in row] for row in expected.tolist()]
    manifest = json.loads((tmp_path / "dba.index" / "index.json").read_text())
    assert manifest["database_rerank"] == "dba:alpha=3:k=2" and manifest["descriptors"]["location"] == "augmented-database"
    np.testing.assert_allclose(open_descriptors(tmp_path / "dba.index" / "augmented-database").matrix(), augmented,
                               atol=1e-6)
    # the index answers only the chain it was built with, over the database it came from
    assert "search it with --rerank dba:alpha=3:k=2" in run_error(capsys, *search, "--load-index", tmp_path / "dba.index")
    assert "but the search asks for dba:alpha=3:k=1" in run_error(capsys, *search, "--rerank", "dba:k=1",
                                                                "--load-index", tmp_path / "dba.index")
    other = x.copy()
    other[[3, 4]] = other[[4, 3]]
    DescriptorSet(other, names(1200)).save(tmp_path / "other.npz")
    assert "fingerprint mismatch" in run_error(capsys, "search", tmp_path / "other.npz", tmp_path / "q.npz",
                                               "--rerank", "dba", "--load-index", tmp_path / "dba.index")
    assert "cannot grow" in run_error(capsys, "index", "add", tmp_path / "dba.index", tmp_path / "q.npz")
    # an approximate index finds DBA's neighbours with its own kind (and re-ranks them exactly)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ivf = SearchIndex.build(db, IndexParams(kind="ivfpq", nlist=8, pq_m=4, nprobe=8, rerank_k=1200), rerank="dba")
    _, ids = ivf.search(queries, 4)
    np.testing.assert_array_equal(ids, exact_top(augmented, queries, 4))


def test_store_paths_are_decoded_one_by_one_and_a_short_paths_file_is_refused(tmp_path, data, monkeypatch):
    """Fingerprints and result lists decode only their rows' paths, never every path of the store."""
    from retrievalkit.store import _PathLines

    x, _, _ = data
    writer = ShardWriter(tmp_path / "db.store")
    writer.append(x[:700], names(700))
    writer.append(x[700:], ["é/ü 1.jpg", *names(499, 701)])
    whole = open_descriptors(tmp_path / "db.store").all_paths()
    assert whole == names(700) + ["é/ü 1.jpg"] + names(499, 701)
    monkeypatch.setattr(_PathLines, "all", lambda self: pytest.fail("every path was decoded"))
    store = open_descriptors(tmp_path / "db.store")
    assert store.paths_at([1199, 700, 0, 699]) == ["img/1199.jpg", "é/ü 1.jpg", "img/0.jpg", "img/699.jpg"]
    store.fingerprint()
    (tmp_path / "db.store" / "shard-00001.paths").write_text("\n".join(names(300)))
    with pytest.raises(RkitError, match="fewer than the 500 lines"):
        open_descriptors(tmp_path / "db.store").paths_at([900])


def test_rows_are_gathered_through_a_random_access_map_and_blocks_streamed_through_another(tmp_path, data,
                                                                                         monkeypatch):
    """A cold store: gathered rows must not read ahead (a fingerprint read all of a 5 GB store), blocks must."""
    import retrievalkit.store as store_module

    x, _, db = data
    ShardWriter(tmp_path / "db.store").append(x, names(1200))
    advised = []
    original = store_module._random_access
    monkeypatch.setattr(store_module, "_random_access", lambda array: advised.append(array) or original(array))
    for source in (open_descriptors(tmp_path / "db.store"), open_descriptors(db)):
        advised.clear()
        streamed = np.concatenate([block for _, block in source.blocks(block_rows=500)])
        assert not advised                                       # streaming keeps the kernel's read-ahead
        np.testing.assert_array_equal(source.rows(np.array([5, 1100, 7])), x[[5, 1100, 7]])
        assert len(advised) == 1 and advised[0].base is not streamed.base
        np.testing.assert_array_equal(streamed, x)


def test_a_plain_index_refuses_dba_with_the_command_that_builds_one(tmp_path, data, capsys):
    _, queries, db = data
    DescriptorSet(queries, [f"q{i}" for i in range(30)]).save(tmp_path / "q.npz")
    run("index", "build", db, "--out", tmp_path / "plain.index", "--no-progress")
    message = run_error(capsys, "search", db, tmp_path / "q.npz", "--rerank", "dba+aqe", "--load-index",
                        tmp_path / "plain.index")
    assert "covers the database as extracted" in message and "--rerank dba:alpha=3:k=2 --out" in message
    run("search", db, tmp_path / "q.npz", "--rerank", "aqe", "--load-index", tmp_path / "plain.index")
    assert "only changes queries" in run_error(capsys, "index", "build", db, "--rerank", "aqe", "--out",
                                               tmp_path / "aqe.index")
