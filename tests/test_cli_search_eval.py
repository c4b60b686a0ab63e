"""``rkit search`` and ``rkit eval`` through the real CLI entry point (``retrievalkit.cli.main``)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from clirun import run, run_error
from retrievalkit.descriptors import DescriptorSet

TINY = ("--backbone", "efficientnet-lite0", "--image-size", "64", "--workers", "0", "--device", "cpu",
        "--no-progress")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)




@pytest.fixture
def hand_db(tmp_path):
    database = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1], [-1, 0]], dtype=np.float32)
    paths = ["A/0.jpg", "A/1.jpg", "B/2.jpg", "B/3.jpg", "C/4.jpg"]
    db = DescriptorSet(database, paths, {"root": "/photos"}).save(tmp_path / "db.npz")
    queries = DescriptorSet(np.array([[0.8, 0.6], [0, 1]], np.float32), ["q1.jpg", "q2.jpg"]).save(tmp_path / "q.npz")
    return db, queries


def write_images(folder, classes=("arch", "dome"), per_class=3, size=(64, 48)):
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, size=(size[1], size[0], 3))
        for i in range(per_class):
            noise = rng.integers(-20, 20, size=base.shape)
            Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(folder / name / f"{i}.jpg")
    return folder


# -- search -----------------------------------------------------------------------------------------
def test_search_tsv_by_hand(hand_db, capsys):
    db, queries = hand_db
    run("search", db, queries, "-k", "3")
    lines = capsys.readouterr().out.splitlines()
    # q1 = (0.8, 0.6): A/1 1.0, B/2 0.96, A/0 0.8;  q2 = (0, 1): B/3 1.0, B/2 0.8, A/1 0.6
    assert lines == [
        "query\trank\tscore\tpath",
        "q1.jpg\t1\t1.000000\tA/1.jpg", "q1.jpg\t2\t0.960000\tB/2.jpg", "q1.jpg\t3\t0.800000\tA/0.jpg",
        "q2.jpg\t1\t1.000000\tB/3.jpg", "q2.jpg\t2\t0.800000\tB/2.jpg", "q2.jpg\t3\t0.600000\tA/1.jpg",
    ]


def test_search_json_to_file(hand_db, tmp_path, capsys):
    db, queries = hand_db
    run("search", db, queries, "-k", "2", "--format", "json", "--out", tmp_path / "hits.json")
    assert capsys.readouterr().out == ""
    document = json.loads((tmp_path / "hits.json").read_text())
    assert document["root"] == "/photos" and document["k"] == 2 and document["index"] == "flat"
    assert [r["query"] for r in document["results"]] == ["q1.jpg", "q2.jpg"]
    assert document["results"][1]["neighbours"] == [
        {"rank": 1, "path": "B/3.jpg", "score": 1.0}, {"rank": 2, "path": "B/2.jpg", "score": 0.8}]


def test_search_ivf_errors_and_index_files(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    db = DescriptorSet(x, [f"{i}.jpg" for i in range(400)]).save(tmp_path / "db.npz")
    queries = DescriptorSet(x[:3], ["a", "b", "c"]).save(tmp_path / "q.npz")
    err = run_error(capsys, "search", db, queries, "--index", "ivf", "--nlist", "1000")
    assert "needs at least 1000 training vectors" in err and "only 400" in err
    err = run_error(capsys, "search", db, queries, "--index", "ivfpq", "--nlist", "4", "--pq-m", "3")
    assert "--pq-m 3 does not divide the descriptor dimension 8" in err

    run("search", db, "--index", "ivf", "--nlist", "4", "--save-index", tmp_path / "db.ivf")
    assert "wrote index" in capsys.readouterr().err
    run("search", db, queries, "--load-index", tmp_path / "db.ivf", "--nprobe", "4", "-k", "1")
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[3] for line in out[1:]] == ["0.jpg", "1.jpg", "2.jpg"]
    other = DescriptorSet(x[:399], [f"{i}.jpg" for i in range(399)]).save(tmp_path / "other.npz")
    err = run_error(capsys, "search", other, queries, "--load-index", tmp_path / "db.ivf")
    assert "holds 400 vectors but the descriptors file has 399" in err
    err = run_error(capsys, "search", db)
    assert "no queries given" in err
    wrong = DescriptorSet(x[:2, :4], ["a", "b"]).save(tmp_path / "wrong.npz")
    assert "[4]-D but the database is 8-D" in run_error(capsys, "search", db, wrong)


def test_search_with_query_images_uses_the_database_model(tmp_path, capsys):
    photos = write_images(tmp_path / "photos")
    run("extract", photos, *TINY, "--pooling", "mac", "--out", tmp_path / "db.npz")
    capsys.readouterr()
    run("search", tmp_path / "db.npz", photos / "dome" / "1.jpg", "--workers", "0", "--no-progress", "-k", "2")
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    query, rank, score, path = lines[1].split("\t")
    assert query.endswith("dome/1.jpg") and path == "dome/1.jpg" and float(score) == pytest.approx(1.0, abs=1e-4)
    assert "mac, size 64" in captured.err       # the database's pooling and size, from its meta
    err = run_error(capsys, "search", tmp_path / "db.npz", photos / "missing.jpg")
    assert "does not exist" in err


def test_search_with_images_needs_a_model(hand_db, tmp_path, capsys):
    db, _ = hand_db
    write_images(tmp_path / "photos")
    err = run_error(capsys, "search", db, tmp_path / "photos")
    assert "does not say which model" in err and "--model DIR" in err


# -- eval: folder collections ------------------------------------------------------------------------
def test_eval_descriptors_json(hand_db, capsys):
    db, _ = hand_db
    run("eval", db, "--json")
    report = json.loads(capsys.readouterr().out)
    # worked by hand in test_evaluate.py::test_folder_collection_by_hand
    assert report["map"] == 0.625 and report["mp_at_k"] == {"1": 0.5, "5": 0.75, "10": 0.75}
    assert report["n_queries"] == 4 and report["left_out"] == 1 and report["classes"] == 3
    assert report["per_class_ap"] == {"A": 0.625, "B": 0.625, "C": None}


def test_eval_table(hand_db, capsys):
    db, _ = hand_db
    run("eval", db, "--ks", "1,2")
    out = capsys.readouterr().out
    assert "mAP 0.6250  mP@1 0.5000  mP@2 0.7500" in out
    assert "1 alone in their class, left out" in out


def test_eval_image_folder_extracts_saves_and_ranks(tmp_path, capsys):
    photos = write_images(tmp_path / "photos", per_class=3)
    run("eval", photos, *TINY, "--pooling", "gem", "--json", "--save-descriptors", tmp_path / "d.npz",
        "--save-rankings", tmp_path / "r.json")
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 6 and report["classes"] == 2 and 0 <= report["map"] <= 1
    saved = DescriptorSet.load(tmp_path / "d.npz")
    assert saved.paths == [f"{c}/{i}.jpg" for c in ("arch", "dome") for i in range(3)]
    assert saved.meta["model"]["pooling"] == "gem" and saved.meta["image_size"] == 64
    run("eval", tmp_path / "d.npz", "--json")
    assert json.loads(capsys.readouterr().out)["map"] == report["map"]
    rankings = json.loads((tmp_path / "r.json").read_text())
    queries = rankings["settings"]["all"]["queries"]
    assert len(queries) == 6 and rankings["root"] == str(photos.resolve())
    first = queries[0]
    assert first["query"] == "arch/0.jpg" and len(first["top"]) == 5
    assert sorted(t["status"] for t in first["top"]) == ["negative"] * 3 + ["positive"] * 2
    assert all((t["status"] == "positive") == t["path"].startswith("arch/") for t in first["top"])


def test_eval_errors(tmp_path, capsys):
    assert "nothing to evaluate" in run_error(capsys, "eval")
    assert "gnd_roxford5k.pkl not found" in run_error(capsys, "eval", "--dataset", "roxford5k",
                                                      "--data-root", tmp_path)


# -- eval: revisited layout --------------------------------------------------------------------------
def write_fake_revisited(data_root):
    root = data_root / "rfake"
    (root / "jpg").mkdir(parents=True)
    gnd = [{"bbx": [0, 0, 40, 30], "easy": [0, 2], "hard": [4], "junk": [1]},
           {"bbx": [10, 5, 60, 45], "easy": [5], "hard": [], "junk": []}]
    with open(root / "gnd_rfake.pkl", "wb") as fh:
        pickle.dump({"imlist": [f"img{i}" for i in range(6)], "qimlist": ["img0", "img5"], "gnd": gnd}, fh)
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, size=(48, 64, 3)).astype(np.uint8)).save(root / "jpg" / f"img{i}.jpg")
    return root


def test_eval_revisited_from_descriptor_files_by_hand(tmp_path, capsys):
    write_fake_revisited(tmp_path / "data")
    database = np.eye(6, dtype=np.float32)
    queries = np.array([np.arange(6, 0, -1), np.arange(1, 7)], dtype=np.float32)   # rankings 0..5 and 5..0
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    db = DescriptorSet(database, [f"jpg/img{i}.jpg" for i in range(6)]).save(tmp_path / "db.npz")
    q = DescriptorSet(queries, ["img0.jpg", "img5.jpg"]).save(tmp_path / "q.npz")
    run("eval", db, "--dataset", "rfake", "--data-root", tmp_path / "data", "--query-descriptors", q, "--json",
        "--save-rankings", tmp_path / "r.json")
    report = json.loads(capsys.readouterr().out)
    settings = report["settings"]
    # worked by hand in test_revisited.py::test_easy_medium_hard_by_hand
    assert settings["easy"]["map"] == 1.0
    assert settings["medium"]["map"] == pytest.approx((65 / 72 + 1) / 2, abs=1e-6)
    assert settings["hard"]["map"] == 0.25 and settings["hard"]["n_queries"] == 1
    assert settings["medium"]["mp_at_k"] == {"1": 1.0, "5": 0.875, "10": 0.875}
    rankings = json.loads((tmp_path / "r.json").read_text())
    assert rankings["primary"] == "medium" and rankings["protocol"] == "revisited"
    q0 = rankings["settings"]["easy"]["queries"][0]
    assert q0["query"] == "img0.jpg" and q0["ap"] == 1.0 and q0["n_positives"] == 2
    assert [t["status"] for t in q0["top"]] == ["positive", "junk", "positive", "negative", "junk", "negative"]
    # a database file of another dataset is refused
    other = DescriptorSet(database, [f"x{i}.jpg" for i in range(6)]).save(tmp_path / "other.npz")
    assert "is an image of rfake" in run_error(capsys, "eval", other, "--dataset", "rfake", "--data-root",
                                               tmp_path / "data", "--query-descriptors", q)


def test_eval_revisited_extracts_cropped_queries(tmp_path, capsys):
    write_fake_revisited(tmp_path / "data")
    run("eval", "--dataset", "rfake", "--data-root", tmp_path / "data", *TINY, "--pooling", "mac",
        "--save-descriptors", tmp_path / "rf.npz")
    out = capsys.readouterr().out
    assert "rfake: 2 queries, 6 images" in out
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["easy", "medium", "hard"]
    database = DescriptorSet.load(tmp_path / "rf.npz")
    queries = DescriptorSet.load(tmp_path / "rf.queries.npz")
    assert database.paths == [f"img{i}.jpg" for i in range(6)] and queries.paths == ["img0.jpg", "img5.jpg"]
    # the query is a crop of image 0, so its descriptor is not image 0's
    assert float(queries.descriptors[0] @ database.descriptors[0]) < 0.9999
    run("eval", tmp_path / "rf.npz", "--dataset", "rfake", "--data-root", tmp_path / "data",
        "--query-descriptors", tmp_path / "rf.queries.npz")
    assert capsys.readouterr().out == out
    # queries extracted here are described like the database file says (mac, 64 px), not by defaults
    run("eval", tmp_path / "rf.npz", "--dataset", "rfake", "--data-root", tmp_path / "data",
        "--workers", "0", "--device", "cpu", "--no-progress")
    assert capsys.readouterr().out == out


def test_eval_descriptors_with_whitening_file(hand_db, tmp_path, capsys):
    from retrievalkit.evaluate import evaluate_folder_collection
    from retrievalkit.whitening import FittedWhitening

    db, _ = hand_db
    whitening = FittedWhitening(np.zeros(2), np.array([[1.0, 0.0], [0.0, 3.0]]), "test")
    whitening.save(tmp_path / "w.npz")
    run("eval", db, "--whiten", tmp_path / "w.npz", "--json")
    report = json.loads(capsys.readouterr().out)
    data = DescriptorSet.load(db)
    expected = evaluate_folder_collection(whitening.apply(data.descriptors), ["A", "A", "B", "B", "C"])
    assert report["map"] == pytest.approx(expected.map, abs=1e-6)
    # stretching y pulls v1 = (0.8, 0.6) towards B: q1's positive v0 drops from rank 2 to 3
    assert expected.per_query_ap[1] == pytest.approx((0 / 2 + 1 / 3) / 2)
