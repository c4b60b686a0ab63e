"""The library API that `rkit eval` and `rkit search` only call: Evaluation, SearchResults, formats."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrievalkit.datasets import load_revisited
from retrievalkit.descriptors import DescriptorSet
from retrievalkit.errors import RkitError
from retrievalkit.evaluate import evaluate_dataset, evaluate_descriptors, evaluate_revisited
from retrievalkit.search import FORMATS, format_results, load_queries, search_database
from test_revisited import descriptors_with_rankings, write_fake_dataset


def test_evaluate_dataset_matches_by_name_in_any_order_and_notes_what_is_missing(tmp_path):
    write_fake_dataset(tmp_path)
    dataset = load_revisited(tmp_path, "rfake")
    queries, database = descriptors_with_rankings([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])
    expected = evaluate_revisited(dataset, queries, database)
    # shuffled rows, other spellings of the names, a foreign row and image 3 missing
    order = [5, 2, 0, 4, 1]
    db = DescriptorSet(np.concatenate([database[order], np.eye(6, dtype=np.float32)[:1]]),
                       [f"jpg/img{i}.JPG" for i in order] + ["elsewhere/other.jpg"])
    q = DescriptorSet(queries[::-1], ["img5.jpg", str(dataset.image_dir / "img0.jpg")])
    evaluation = evaluate_dataset(dataset, db, q, ks=(1, 5))
    assert evaluation.protocol == "revisited" and list(evaluation.results) == ["easy", "medium", "hard"]
    assert evaluation.notes and "1 of 6 database images" in evaluation.notes[0]
    # image 3 is a negative for both queries: leaving it out only moves later positives up
    assert evaluation.results["easy"].map == pytest.approx(expected["easy"].map)
    report = evaluation.report()
    assert report["missing_images"] == 1 and report["missing_queries"] == 0
    assert set(report["settings"]["medium"]["mp_at_k"]) == {"1", "5"}
    assert evaluation.table().splitlines()[0] == "rfake: 2 queries, 6 images, 6-D"
    document = evaluation.rankings_document()
    assert document["primary"] == "medium" and document["meta"]["dataset"] == "rfake"
    with pytest.raises(RkitError, match="is an image of rfake"):
        evaluate_dataset(dataset, DescriptorSet(database, [f"x{i}.jpg" for i in range(6)]), q)
    with pytest.raises(RkitError, match="is a query of rfake"):
        evaluate_dataset(dataset, db, DescriptorSet(queries, ["a.jpg", "b.jpg"]))


def test_evaluate_descriptors_with_given_labels_and_saved_rankings(tmp_path):
    x = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1]], dtype=np.float32)
    dset = DescriptorSet(x, ["p/0.jpg", "p/1.jpg", "p/2.jpg", "p/3.jpg"], {"source": "made"})
    by_folder = evaluate_descriptors(dset)
    assert by_folder.info["classes"] == 1 and by_folder.results["all"].map == 1.0
    given = evaluate_descriptors(dset, ["a", "b", "a", "b"])
    assert given.info["source"] == "made" and given.info["class_sizes"] == {"a": 2, "b": 2}
    assert 0 < given.results["all"].map < 1
    path = given.save_rankings(tmp_path / "r.json")
    assert json.loads(path.read_text())["settings"]["all"]["map"] == round(given.results["all"].map, 6)
    assert given.report()["map"] == round(given.results["all"].map, 6)


def test_search_results_rows_and_formats(tmp_path):
    database = DescriptorSet(np.array([[1, 0], [0.6, 0.8], [0, 1]], np.float32), ["a.jpg", "b.jpg", "c.jpg"],
                             {"root": "/db"})
    DescriptorSet(np.array([[0, 1]], np.float32), ["q1.jpg"]).save(tmp_path / "q1.npz")
    DescriptorSet(np.array([[1, 0]], np.float32), ["q2.jpg"]).save(tmp_path / "q2.npz")
    queries = load_queries([tmp_path / "q1.npz", tmp_path / "q2.npz"], dim=2)
    results = search_database(database, queries, k=2, info={"k": 2})
    assert [(r["query"], r["rank"], r["path"]) for r in results.rows()] == [
        ("q1.jpg", 1, "c.jpg"), ("q1.jpg", 2, "b.jpg"), ("q2.jpg", 1, "a.jpg"), ("q2.jpg", 2, "b.jpg")]
    assert format_results(results, "tsv").splitlines()[1] == "q1.jpg\t1\t1.000000\tc.jpg"
    document = json.loads(format_results(results, "json"))
    assert document["root"] == "/db" and document["k"] == 2
    assert document["results"][1]["neighbours"][1] == {"rank": 2, "path": "b.jpg", "score": 0.6}
    assert set(FORMATS) >= {"tsv", "json"}
    with pytest.raises(RkitError, match="unknown output format"):
        format_results(results, "xml")
    with pytest.raises(RkitError, match=r"\[2\]-D but the database is 3-D"):
        load_queries([tmp_path / "q1.npz"], dim=3)
