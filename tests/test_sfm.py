"""rkit sfm: pairs, errors, unregistered/unreadable reports, resume, database contents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from retrievalkit.cli import main
from retrievalkit.errors import Interrupted, RkitError
from retrievalkit.sfm import (SfmOptions, exhaustive_pairs, find_images, neighbour_pairs, run_sfm)
from retrievalkit.trainingdb import load_database

FAST = dict(image_size=320, max_features=2048, num_threads=1)


def noise_images(folder: Path, count: int, seed: int = 0, size: int = 160) -> list[str]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for k in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"noise{k}.png")
        names.append(f"noise{k}.png")
    return names


@pytest.fixture
def church(landmarks_dir, tmp_path) -> Path:
    """herzjesu_P8 (8 photos of one church) linked into a fresh folder, plus 2 noise images and
    one file that is not an image."""
    folder = tmp_path / "photos"
    (folder / "church").mkdir(parents=True)
    for photo in sorted((landmarks_dir / "herzjesu_P8").iterdir()):
        (folder / "church" / photo.name).symlink_to(photo)
    noise_images(folder / "noise", 2)
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    return folder


def test_exhaustive_pairs_are_every_unordered_pair():
    assert exhaustive_pairs(["a", "b", "c"]) == [("a", "b"), ("a", "c"), ("b", "c")]


def test_neighbour_pairs_take_top_k_and_symmetrise():
    # 4 images on a circle: 0 and 1 close, 2 and 3 close, the two groups far apart
    angles = np.radians([0, 10, 180, 195])
    descriptors = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    names = ["a", "b", "c", "d"]
    assert neighbour_pairs(descriptors, names, 1) == [("a", "b"), ("c", "d")]
    # k=2: a's second neighbour is the nearer of c/d: d at 195 deg (165 deg from a) beats c (180)
    pairs = neighbour_pairs(descriptors, names, 2)
    assert ("a", "b") in pairs and ("c", "d") in pairs and ("a", "d") in pairs
    assert len(set(pairs)) == len(pairs) and all(x < y for x, y in pairs)
    assert len(neighbour_pairs(descriptors, names, 10)) == 6  # k capped at n - 1: all pairs


def test_folder_without_images_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    with pytest.raises(RkitError, match="no images in"):
        find_images(tmp_path / "empty")
    with pytest.raises(RkitError, match="not a folder"):
        find_images(tmp_path / "missing")


def test_cli_reports_no_images_without_traceback(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["sfm", str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Error: no images in" in err and "Traceback" not in err


def test_images_that_share_nothing_give_a_clear_error(tmp_path):
    noise_images(tmp_path / "noise", 4, seed=1)
    with pytest.raises(RkitError, match="no 3D model could be reconstructed"):
        run_sfm(tmp_path / "noise", tmp_path / "out", SfmOptions(**FAST), progress=False, log=lambda m: None)


def test_single_readable_image_is_a_clear_error(tmp_path):
    noise_images(tmp_path / "one", 1)
    (tmp_path / "one" / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(RkitError, match="1 readable image"):
        run_sfm(tmp_path / "one", tmp_path / "out", SfmOptions(**FAST), progress=False, log=lambda m: None)


@pytest.mark.landmarks
def test_church_is_reconstructed_and_failures_are_reported(church, tmp_path):
    messages: list[str] = []
    result = run_sfm(church, tmp_path / "out", SfmOptions(**FAST), progress=False, log=messages.append)
    church_images = {f"church/{p.name}" for p in (church / "church").iterdir()}
    assert len(set(result.registered) & church_images) >= 7  # of 8
    assert set(result.registered) <= church_images
    assert {"noise/noise0.png", "noise/noise1.png"} <= set(result.unregistered)
    assert [name for name, _ in result.unreadable] == ["broken.jpg"]
    assert any("not registered" in m and "noise/noise0.png" in m for m in messages)
    assert any("skipping unreadable image broken.jpg" in m for m in messages)

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["images"] == 11 and report["registered"] == len(result.registered)
    assert "noise/noise1.png" in report["unregistered"] and report["unreadable"][0][0] == "broken.jpg"
    assert set(report["seconds"]) == {"features", "pairs", "matches", "mapping", "database"}

    db = load_database(tmp_path / "out")
    assert db.images == result.database.images and db.num_clusters == 1
    assert db.pair_cache is not None and db.root == church.resolve()
    n = len(db)
    for q in range(n):
        assert len(db.point_ids[q]) > 50
        assert np.all(db.point_depths[q] > 0)  # points in front of the camera
        for i in db.co_observing(q):
            assert 0 < db.overlap(q, int(i)) <= 1 and db.scale_change(q, int(i)) >= 1
            assert db.shared_points(q, int(i)) == db.shared_points(int(i), q)
    # the cache agrees with recomputation from the stored points
    fresh = load_database(tmp_path / "out")
    fresh.pair_cache = None
    for q in range(n):
        for i in range(n):
            if q != i:
                assert fresh.shared_points(q, i) == db.shared_points(q, i)
                assert fresh.overlap(q, i) == pytest.approx(db.overlap(q, i))
    # Herz-Jesu P8 is a sweep along a facade: neighbours in the sequence share more than ends
    order = sorted(range(n), key=lambda k: db.images[k])
    first, second, last = order[0], order[1], order[-1]
    assert db.shared_points(first, second) > db.shared_points(first, last)


@pytest.mark.landmarks
def test_rerun_after_interrupted_matching_resumes(church, tmp_path, monkeypatch):
    out = tmp_path / "out"
    options = SfmOptions(**FAST)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pycolmap, "match_image_pairs", crash)
    with pytest.raises(Interrupted, match=r"kept the finished stages \(features, pairs\)"):
        run_sfm(church, out, options, progress=False, log=lambda m: None)
    assert (out / "stages" / "features.json").is_file() and (out / "stages" / "pairs.json").is_file()
    assert not (out / "stages" / "matches.json").exists()
    monkeypatch.undo()

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr(pycolmap, "extract_features", no_extraction)
    result = run_sfm(church, out, options, progress=False, log=lambda m: None)
    assert result.skipped_stages == ["features", "pairs"]
    assert len(result.registered) >= 7

    # a mapper option changed: only mapping (and the database) run again
    def no_matching(*args, **kwargs):
        raise AssertionError("pairs were matched again")

    monkeypatch.setattr(pycolmap, "match_image_pairs", no_matching)
    again = run_sfm(church, out, SfmOptions(**FAST, min_model_size=4), progress=False, log=lambda m: None)
    assert again.skipped_stages == ["features", "pairs", "matches"]
    assert json.loads((out / "stages" / "mapping.json").read_text())["options"]["min_model_size"] == 4


@pytest.mark.landmarks
def test_retrieval_pairs_are_written_and_matched(church, tmp_path, monkeypatch):
    import retrievalkit.sfm as sfm

    def fake_descriptors(images_dir, names, options, progress=True):
        # church photos in sequence on an arc, noise images elsewhere: k=2 links neighbours
        rows = []
        for k, name in enumerate(names):
            angle = np.radians(10 * k) if name.startswith("church/") else np.radians(200 + 40 * k)
            rows.append([np.cos(angle), np.sin(angle)])
        return np.asarray(rows, np.float32)

    monkeypatch.setattr(sfm, "retrieval_descriptors", fake_descriptors)
    # first exhaustively, then with retrieval pairs in the same folder: the features are
    # reused and the matches of pairs no longer chosen are dropped from the COLMAP database
    run_sfm(church, tmp_path / "out", SfmOptions(**FAST, pairs="exhaustive"), progress=False, log=lambda m: None)
    messages: list[str] = []
    result = run_sfm(church, tmp_path / "out", SfmOptions(**FAST, pairs="retrieval", k=2),
                     progress=False, log=messages.append)
    assert result.skipped_stages == ["features"]
    pairs = (tmp_path / "out" / "pairs.txt").read_text().split("\n")
    with pycolmap.Database.open(tmp_path / "out" / "colmap.db") as db:
        ids = {image.name: image.image_id for image in db.read_all_images()}
        stored, _ = db.read_all_matches()
    wanted = {pycolmap.image_pair_to_pair_id(ids[a], ids[b]) for a, b in (p.split() for p in pairs if p)}
    church_pairs = {pid for pid in wanted if all(n.startswith("church/") for n in
                    [name for name, i in ids.items() if i in pycolmap.pair_id_to_image_pair(pid)])}
    # only retrieval pairs keep matches (noise pairs may have none), all church pairs do
    assert church_pairs <= set(stored) <= wanted and len(church_pairs) >= 7
    assert any("dropped the matches of" in m for m in messages)
    assert "church/0000.jpg church/0001.jpg" in pairs and "church/0000.jpg church/0007.jpg" not in pairs
    assert len([p for p in pairs if p]) < 45  # fewer than the 45 exhaustive pairs of 10 images
    assert json.loads((tmp_path / "out" / "stages" / "pairs.json").read_text())["options"]["mode"] == "retrieval"
    assert len(result.registered) >= 6


# -- the synthetic set: what SfM recovers against the true cameras ------------------------------
@pytest.fixture(scope="module")
def synthetic_reconstruction(tmp_path_factory):
    synth = pytest.importorskip("retrievalkit.synth")
    base = tmp_path_factory.mktemp("synthetic")
    data = synth.generate_synthetic(base / "data", preset="tiny", progress=False)
    result = run_sfm(data / "images", base / "sfm", SfmOptions(image_size=320, num_threads=2),
                     progress=False, log=lambda m: None)
    return result.database, synth.synthetic_ground_truth(data)


def _pairs_in_models(db):
    return [(q, i) for q in range(len(db)) for i in range(len(db)) if q != i and db.clusters[q] == db.clusters[i]]


def test_synthetic_scenes_become_one_pure_model_each(synthetic_reconstruction):
    db, truth = synthetic_reconstruction
    assert sorted(db.images) == sorted(truth.images)  # every view registered
    index = {name: k for k, name in enumerate(truth.images)}
    for cluster in range(db.num_clusters):
        scenes = {int(truth.clusters[index[db.images[k]]]) for k in db.cluster_members(cluster)}
        assert len(scenes) == 1
    assert db.num_clusters == truth.num_clusters


def test_synthetic_cameras_and_scale_changes_match_the_truth(synthetic_reconstruction):
    db, truth = synthetic_reconstruction
    index = [truth.images.index(name) for name in db.images]
    for cluster in range(db.num_clusters):
        members = db.cluster_members(cluster)
        rec = np.linalg.norm(db.centres[members][:, None] - db.centres[members][None], axis=2)
        true = truth.centres[[index[k] for k in members]]
        true = np.linalg.norm(true[:, None] - true[None], axis=2)
        upper = np.triu_indices(len(members), 1)
        ratio = rec[upper] / true[upper]  # one global scale per model: SfM is up to similarity
        assert ratio.std() / ratio.mean() < 0.05
    assert np.allclose(db.focals, truth.focals[index], rtol=0.05)
    errors = []
    for q, i in _pairs_in_models(db):
        if db.shared_points(q, i) >= 30:
            errors.append(abs(db.scale_change(q, i) / truth.scale_change(index[q], index[i]) - 1))
    errors = np.asarray(errors)
    assert len(errors) > 50
    assert np.median(errors) < 0.06 and np.percentile(errors, 90) < 0.15


def test_synthetic_co_visibility_follows_the_truth(synthetic_reconstruction):
    from scipy.stats import spearmanr

    db, truth = synthetic_reconstruction
    index = [truth.images.index(name) for name in db.images]
    pairs = _pairs_in_models(db)
    # every pair of views of a tiny scene truly overlaps; SfM links them all too
    assert all(truth.shared_points(index[q], index[i]) > 0 for q, i in pairs)
    assert all(db.shared_points(q, i) > 0 for q, i in pairs)
    recovered = [db.shared_points(q, i) for q, i in pairs]
    true = [truth.shared_points(index[q], index[i]) for q, i in pairs]
    # The true points model matchable texture detail (synthetic_ground_truth: a detail is seen
    # where it is at least a pixel large and the surface faces the camera), so both the counts
    # and the overlap fractions rank the pairs as SfM does: measured Spearman 0.65-0.84 for the
    # counts and 0.66-0.74 for the overlaps on seeds 0 and 1 (docs/sfm.md).
    assert spearmanr(recovered, true)[0] > 0.5
    recovered_overlap = [db.overlap(q, i) for q, i in pairs]
    true_overlap = [truth.overlap(index[q], index[i]) for q, i in pairs]
    assert spearmanr(recovered_overlap, true_overlap)[0] > 0.5


class _StubImage:
    def __init__(self, name):
        self.name = name


class _StubModel:
    """Just what the model-merging step reads of a pycolmap Reconstruction."""

    def __init__(self, names):
        self.images = {k: _StubImage(n) for k, n in enumerate(names)}

    def reg_image_ids(self):
        return list(self.images)


def test_a_damaged_database_is_built_again_on_rerun(synthetic_reconstruction):
    from retrievalkit.trainingdb import ARRAYS_NAME

    db, _ = synthetic_reconstruction
    out = db.root.parent.parent / "sfm"  # the fixture's layout: base/data/images, base/sfm
    (out / "database" / ARRAYS_NAME).write_bytes(b"damaged")
    result = run_sfm(db.root, out, SfmOptions(image_size=320, num_threads=2), progress=False,
                     log=lambda m: None)
    assert result.skipped_stages == ["features", "pairs", "matches", "mapping"]
    assert result.database.images == db.images and result.database.clusters.tolist() == db.clusters.tolist()
    assert load_database(out).images == db.images

def test_models_sharing_an_image_become_one_cluster():
    from retrievalkit.sfm import _merge_models_sharing_images

    models = [_StubModel(["a", "b", "c"]), _StubModel(["x", "y", "z"]), _StubModel(["c", "d"]),
              _StubModel(["p", "q", "r"]), _StubModel(["d", "e"])]
    # model 2 shares c with model 0, model 4 shares d with model 2: all one place
    assert _merge_models_sharing_images(models) == [0, 1, 0, 2, 0]
    # x..z and p..r in one group of the match graph: one place that COLMAP split in two models
    assert _merge_models_sharing_images(models, [["a", "b", "c", "d", "e"], ["p", "q", "r", "x", "y", "z"]]) \
        == [0, 1, 0, 1, 0]


def test_match_graph_components_group_linked_images(tmp_path):
    from retrievalkit.sfm import match_graph_components

    db_path = tmp_path / "colmap.db"
    names = [f"im{k}.jpg" for k in range(6)]
    with pycolmap.Database.open(db_path) as db:
        camera = db.write_camera(pycolmap.Camera.create_from_model_name(0, "SIMPLE_PINHOLE", 100.0, 64, 64))
        ids = [db.write_image(pycolmap.Image(name=n, camera_id=camera)) for n in names]
        for a, b, inliers in [(0, 1, 40), (1, 2, 40), (3, 4, 40), (4, 5, 5)]:
            geometry = pycolmap.TwoViewGeometry()
            geometry.config = pycolmap.TwoViewGeometryConfiguration.CALIBRATED
            geometry.inlier_matches = np.stack([np.arange(inliers), np.arange(inliers)], 1).astype(np.uint32)
            db.write_two_view_geometry(ids[a], ids[b], geometry)
    groups = match_graph_components(db_path, names, min_inliers=15)
    # the 4-5 link has too few inliers: 5 is alone
    assert groups == [["im0.jpg", "im1.jpg", "im2.jpg"], ["im3.jpg", "im4.jpg"], ["im5.jpg"]]


@pytest.mark.landmarks
def test_cli_runs_and_reports(church, tmp_path, capsys):
    main(["sfm", str(church), "--out", str(tmp_path / "out"), "--image-size", "320", "--max-features", "2048",
          "--threads", "1", "--no-split-groups", "--init-max-forward-motion", "0.99"])
    out = capsys.readouterr().out
    assert "images in 1 models" in out and "registered" in out
    assert "not registered (2): noise/noise0.png noise/noise1.png" in out
    assert "unreadable (1): broken.jpg" in out
    mapping = json.loads((tmp_path / "out" / "stages" / "mapping.json").read_text())["options"]
    assert mapping["split_components"] is False and mapping["init_max_forward_motion"] == 0.99
    main(["sfm", "--stats", str(tmp_path / "out"), "--json"])
    stats = json.loads(capsys.readouterr().out)
    assert stats["models"] == 1 and stats["unregistered_images"] == 2 and stats["has_points"] is True


@pytest.mark.landmarks
@pytest.mark.slow
def test_retrieval_descriptors_of_the_off_the_shelf_model(church):
    from retrievalkit.sfm import retrieval_descriptors

    names = find_images(church)
    names.remove("broken.jpg")
    descriptors = retrieval_descriptors(church, names, SfmOptions(descriptor_image_size=96, device="cpu"),
                                        progress=False)
    assert descriptors.shape == (len(names), 1280)
    assert np.allclose(np.linalg.norm(descriptors, axis=1), 1, atol=1e-4)
    # a church photo's nearest neighbour is another church photo, not a noise image
    pairs = neighbour_pairs(descriptors, names, 1)
    assert all(a.startswith("church/") and b.startswith("church/") for a, b in pairs if "church/" in a)


# -- the stage runner and the progress bars ---------------------------------------------------------
def test_stage_runner_reuses_reruns_and_clears_later_markers(tmp_path):
    from retrievalkit.stages import Stage, read_marker, run_stages

    calls: list[str] = []
    settings = {"a": 1, "b": 1}

    def stage(name, reusable=lambda ctx: True):
        return Stage(name, lambda ctx: calls.append(name) or {"did": name},
                     lambda ctx: {"setting": settings.get(name)}, reusable)

    stages = [stage("a"), stage("b"), stage("c")]
    first = run_stages(stages, None, tmp_path, lambda m: None)
    assert calls == ["a", "b", "c"] and first.reused == [] and read_marker(tmp_path, "b")["did"] == "b"
    calls.clear()
    assert run_stages(stages, None, tmp_path, lambda m: None).reused == ["a", "b", "c"] and calls == []
    settings["b"] = 2  # b's inputs changed: b and c run again, a is reused
    messages: list[str] = []
    again = run_stages(stages, None, tmp_path, messages.append)
    assert calls == ["b", "c"] and again.reused == ["a"] and again.changed == ["b"]
    assert any("[b] options changed" in m for m in messages)
    assert read_marker(tmp_path, "b")["options"] == {"setting": 2}
    calls.clear()
    # an output that cannot be reused (reuse returns False) runs the stage and the later ones
    broken = [stage("a"), stage("b", lambda ctx: False), stage("c")]
    assert run_stages(broken, None, tmp_path, lambda m: None).reused == ["a"] and calls == ["b", "c"]
    calls.clear()

    # an interrupted re-run of b leaves neither b's nor c's marker behind
    def interrupted(ctx):
        raise KeyboardInterrupt

    settings["b"] = 3
    with pytest.raises(Interrupted) as stopped:
        run_stages([stage("a"), Stage("b", interrupted, lambda ctx: {"setting": 3}), stage("c")],
                   None, tmp_path, lambda m: None)
    assert stopped.value.kept == f"the finished stages (a) in {tmp_path.parent}"
    assert read_marker(tmp_path, "a") is not None
    assert read_marker(tmp_path, "b") is None and read_marker(tmp_path, "c") is None
    # stop_after ends the run after that stage
    assert run_stages(stages, None, tmp_path, lambda m: None, stop_after="b").reused == ["a"]
    assert calls == ["b"] and read_marker(tmp_path, "c") is None


def test_mapping_bar_is_capped_per_group_and_matching_chunks_are_small():
    from retrievalkit.sfm import _capped, match_chunk_size

    class Bar:
        n = 0

        def update(self, count):
            self.n += count

    bar = Bar()  # the mapping bar of two groups of 6 and 4 images
    step = _capped(bar, 6)
    for count in (2, 1, 1, 2, 1, 2):  # more registrations reported than images: capped at 6
        step(count)
    assert bar.n == 6
    step(6)
    second = _capped(bar, 4)
    second(1)
    second(4)  # the group is done: the bar reaches its total, not more
    assert bar.n == 10
    assert [match_chunk_size(n) for n in (10, 345, 1639, 7626, 100000)] == [32, 32, 41, 191, 200]


def test_find_images_follows_linked_folders(tmp_path):
    noise_images(tmp_path / "elsewhere", 2, size=32)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "linked").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "photos" / "linked" / "loop").symlink_to(tmp_path / "photos")  # a loop: listed once
    assert find_images(tmp_path / "photos") == ["linked/noise0.png", "linked/noise1.png"]
