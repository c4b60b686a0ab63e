"""The revisited Oxford/Paris reader and its Easy/Medium/Hard/classic settings on a fake gnd."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from PIL import Image

from retrievalkit.datasets import load_revisited
from retrievalkit.errors import RkitError
from retrievalkit.evaluate import evaluate_revisited

N_IMAGES = 6


def write_fake_dataset(data_root, name="rfake", *, classic=False, images=True):
    """6 database images, 2 queries (q0 = image 0 cropped, q1 = image 5 cropped)."""
    root = data_root / name
    (root / "jpg").mkdir(parents=True)
    imlist = [f"img{i}" for i in range(N_IMAGES)]
    if classic:
        gnd = [{"bbx": [1, 2, 20, 30], "ok": [0, 2, 4], "junk": [1]},
               {"bbx": [0, 0, 10, 10], "ok": [5], "junk": []}]
    else:
        gnd = [{"bbx": [1.0, 2.0, 20.0, 30.0], "easy": np.array([0, 2]), "hard": np.array([4]), "junk": np.array([1])},
               {"bbx": [0, 0, 10, 10], "easy": [5], "hard": [], "junk": []}]
    with open(root / f"gnd_{name}.pkl", "wb") as fh:
        pickle.dump({"imlist": imlist, "qimlist": ["img0", "img5"], "gnd": gnd}, fh)
    if images:
        for i, stem in enumerate(imlist):
            Image.new("RGB", (32, 24), (40 * i, 10, 200 - 30 * i)).save(root / "jpg" / f"{stem}.jpg")
    return root


@pytest.fixture(autouse=True)
def fake(tmp_path):
    """Every test gets the fake revisited dataset ``rfake`` under ``tmp_path``."""
    write_fake_dataset(tmp_path)


def descriptors_with_rankings(rankings):
    """Database = one-hot rows; query q weights image i by its place in rankings[q]."""
    database = np.eye(N_IMAGES, dtype=np.float32)
    queries = np.zeros((len(rankings), N_IMAGES), dtype=np.float32)
    for q, order in enumerate(rankings):
        queries[q, order] = np.arange(N_IMAGES, 0, -1)
    return queries / np.linalg.norm(queries, axis=1, keepdims=True), database


def test_reader(tmp_path):
    dataset = load_revisited(tmp_path, "rfake")
    assert dataset.images == [f"img{i}" for i in range(6)] and dataset.queries == ["img0", "img5"]
    assert dataset.image_paths()[2] == "img2.jpg" and dataset.query_paths() == ["img0.jpg", "img5.jpg"]
    assert dataset.query_crops() == [(1.0, 2.0, 20.0, 30.0), (0.0, 0.0, 10.0, 10.0)]
    assert (dataset.image_dir / "img3.jpg").is_file()
    assert dataset.settings() == ("easy", "medium", "hard")
    positives, junk = dataset.setting("easy")
    assert positives[0].tolist() == [0, 2] and junk[0].tolist() == [1, 4]
    positives, junk = dataset.setting("hard")
    assert positives[0].tolist() == [4] and junk[0].tolist() == [0, 1, 2]
    assert positives[1].tolist() == [] and junk[1].tolist() == [5]




def test_easy_medium_hard_by_hand(tmp_path):
    dataset = load_revisited(tmp_path, "rfake")
    queries, database = descriptors_with_rankings([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])
    results = evaluate_revisited(dataset, queries, database)
    assert list(results) == ["easy", "medium", "hard"]
    assert results["medium"].rankings.tolist()[0] == [0, 1, 2, 3, 4, 5]
    # q0 easy: positives {0,2}, junk {1,4}: 0(r0) 2(r1) -> AP 1.   q1: 5 first -> AP 1
    np.testing.assert_allclose(results["easy"].per_query_ap, [1, 1])
    # q0 medium: positives {0,2,4}, junk {1}: 0(r0) 2(r1) 3 4(r3): 1, 1, (2/3 + 3/4)/2 = 17/24
    assert results["medium"].per_query_ap[0] == pytest.approx(65 / 72)
    assert results["medium"].map == pytest.approx((65 / 72 + 1) / 2)
    # q0 hard: positive {4}, junk {0,1,2}: 3(r0) 4(r1) -> (0 + 1/2)/2;  q1 has no hard positive
    assert results["hard"].per_query_ap[0] == pytest.approx(0.25)
    assert math.isnan(results["hard"].per_query_ap[1])
    assert results["hard"].map == pytest.approx(0.25) and results["hard"].n_left_out == 1
    # mP@k: medium q0 positives at junk-free ranks 1, 2, 4 -> P@1 1, P@5 = P@10 = 3/4
    assert results["medium"].per_query_precision[5][0] == pytest.approx(0.75)
    assert results["medium"].mp_at_k == pytest.approx({1: 1.0, 5: 0.875, 10: 0.875})
    # hard q0: P@1 = 0 (3 is first), P@5 capped at rank 2 -> 1/2
    assert results["hard"].mp_at_k == pytest.approx({1: 0.0, 5: 0.5, 10: 0.5})
    assert results["easy"].top_status[0].tolist() == [1, 2, 1, 0, 2, 0]
    classic = evaluate_revisited(dataset, queries, database, settings=["classic"])["classic"]
    np.testing.assert_allclose(classic.per_query_ap, results["medium"].per_query_ap)


def test_classic_ground_truth(tmp_path):
    write_fake_dataset(tmp_path, "oxfake", classic=True)
    dataset = load_revisited(tmp_path, "oxfake")
    assert dataset.settings() == ("classic",) and not dataset.is_revisited
    queries, database = descriptors_with_rankings([[0, 1, 2, 3, 4, 5], [0, 5, 1, 2, 3, 4]])
    result = evaluate_revisited(dataset, queries, database)["classic"]
    # q0 as medium above: 65/72.  q1: positive 5 at r=1: 1/4
    np.testing.assert_allclose(result.per_query_ap, [65 / 72, 0.25])
    with pytest.raises(RkitError, match="setting 'hard' does not exist.*classic"):
        dataset.setting("hard")


def test_failed_images_and_queries(tmp_path):
    dataset = load_revisited(tmp_path, "rfake")
    queries, database = descriptors_with_rankings([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])
    # image 2 failed to load, query 1 too: image 2 counts as a positive never found
    kept = [0, 1, 3, 4, 5]
    results = evaluate_revisited(dataset, queries[:1], database[kept], query_ids=[0], database_ids=kept)
    # easy q0: positives {0, 2}, junk {1, 4}: ranking 0 1 3 4 5 -> 0 at r0 only: 1/2
    assert results["easy"].per_query_ap[0] == pytest.approx(0.5)
    assert math.isnan(results["easy"].per_query_ap[1]) and results["easy"].n_left_out == 1
    assert results["easy"].rankings[1].tolist() == [-1] * 5
    with pytest.raises(RkitError, match="do not match"):
        evaluate_revisited(dataset, queries, database[kept])


def test_reader_errors(tmp_path):
    with pytest.raises(RkitError, match="gnd_roxford5k.pkl not found: download roxford5k"):
        load_revisited(tmp_path, "roxford5k")
    root = tmp_path / "bad"
    root.mkdir()
    (root / "gnd_bad.pkl").write_bytes(pickle.dumps({"imlist": ["a"], "qimlist": ["a"], "gnd": [{"easy": [3], "hard": [], "junk": []}]}))
    (root / "jpg").mkdir()
    with pytest.raises(RkitError, match="outside 0..0"):
        load_revisited(tmp_path, "bad")
    (root / "gnd_bad.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(RkitError, match="lacks the keys"):
        load_revisited(tmp_path, "bad")
    write_fake_dataset(tmp_path, "noimg", images=False)
    (tmp_path / "noimg" / "jpg").rmdir()
    with pytest.raises(RkitError, match="image folder .* not found"):
        load_revisited(tmp_path, "noimg")
    assert load_revisited(tmp_path, "noimg", require_images=False).images[0] == "img0"


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_reader_refuses_code_in_the_pickle(tmp_path):
    root = tmp_path / "evil"
    (root / "jpg").mkdir(parents=True)
    (root / "gnd_evil.pkl").write_bytes(pickle.dumps({"imlist": [], "qimlist": [], "gnd": [Evil()]}))
    with pytest.raises(RkitError, match="refusing to load builtins.print"):
        load_revisited(tmp_path, "evil")


def test_match_paths_to_dataset_ids(tmp_path):
    dataset = load_revisited(tmp_path, "rfake")
    absolute = str(dataset.image_dir / "img4.jpg")
    ids, rows = dataset.match(["jpg/img3.jpg", "other/x.jpg", "img1.jpg", absolute, "img1.png"])
    assert ids.tolist() == [3, 1, 4] and rows.tolist() == [0, 2, 3]     # unknown and repeated skipped
    ids, rows = dataset.match(["img5.jpg", "img2.jpg"], queries=True)
    assert ids.tolist() == [1] and rows.tolist() == [0]
