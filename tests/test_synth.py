"""The synthetic multi-view dataset: determinism, geometry conventions, ground truth, CLI."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrievalkit.errors import RkitError
from retrievalkit.synth import (
    GROUND_TRUTH_FILE,
    Camera,
    Plane,
    Scene,
    build_scene,
    generate_synthetic,
    look_at,
    render_view,
    resolve_params,
    surface_points,
    synthetic_ground_truth,
    synthetic_points,
    visible_points,
)

# 2 scenes x 3 views at 160x120: the smallest set that still has scenes, views and overlaps
SMALL = dict(preset="tiny", num_scenes=2, views_per_scene=3, image_size=(160, 120), progress=False)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("synth") / "small", **SMALL)


@pytest.fixture(scope="module")
def small_truth(small_set: Path):
    return synthetic_ground_truth(small_set)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- layout and determinism ---------------------------------------------------------------------
def test_layout_and_ground_truth_file(small_set: Path) -> None:
    images = sorted(str(p.relative_to(small_set / "images")) for p in (small_set / "images").rglob("*.jpg"))
    assert images == [f"scene{s:02d}/view{v:02d}.jpg" for s in range(2) for v in range(3)]
    assert Image.open(small_set / "images" / images[0]).size == (160, 120)
    truth = json.loads((small_set / GROUND_TRUTH_FILE).read_text())
    assert truth["version"] >= 1 and truth["parameters"]["seed"] == 0
    assert [im["path"] for im in truth["images"]] == images
    assert (small_set / "README.md").is_file()
    assert not list(small_set.parent.glob(".small.partial-*")), "the staging folder must be gone"
    for im in truth["images"]:
        R, t, K = np.array(im["R"]), np.array(im["t"]), np.array(im["K"])
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
        assert np.linalg.det(R) == pytest.approx(1.0)
        np.testing.assert_allclose(np.array(im["centre"]), -R.T @ t, atol=1e-9)
        # focal = 1.2 * max(w, h) = 192, principal point at the image centre
        np.testing.assert_allclose(K, [[192, 0, 80], [0, 192, 60], [0, 0, 1]])
    walls = [p for p in truth["scenes"][0]["planes"] if p["kind"] == "wall"]
    assert 2 <= len(walls) <= 4


def test_same_seed_gives_identical_bytes_other_seed_differs(small_set: Path, tmp_path: Path) -> None:
    again = generate_synthetic(tmp_path / "again", **SMALL)
    assert _files(again) == _files(small_set)
    other = generate_synthetic(tmp_path / "other", **{**SMALL, "num_scenes": 1, "views_per_scene": 2}, seed=1)
    assert (other / "images/scene00/view00.jpg").read_bytes() != (small_set / "images/scene00/view00.jpg").read_bytes()


def test_ground_truth_is_deterministic(small_set: Path, small_truth) -> None:
    again = synthetic_ground_truth(small_set)
    assert again.images == small_truth.images
    for a, b in zip(again.point_ids, small_truth.point_ids):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(synthetic_points(small_set).xyz, synthetic_points(small_set).xyz)


def test_images_are_textured(small_set: Path) -> None:
    # a cheap texture measure: mean absolute horizontal gradient and the share of 16x16 tiles
    # with real contrast (a blank or smooth-gradient image scores about 0 on both)
    for path in sorted((small_set / "images").rglob("*.jpg")):
        grey = np.asarray(Image.open(path).convert("L"), dtype=float)
        gradient = np.abs(np.diff(grey, axis=1)).mean()
        tiles = grey[:112].reshape(7, 16, 10, 16).std(axis=(1, 3))
        assert gradient > 3.0, path
        assert (tiles > 8).mean() > 0.4, path
    blank = np.tile(np.linspace(0, 255, 160), (120, 1))
    assert np.abs(np.diff(blank, axis=1)).mean() < 3.0


# -- completeness, resume, errors ----------------------------------------------------------------
def test_complete_set_is_kept_other_parameters_refused(small_set: Path, tmp_path: Path) -> None:
    target = tmp_path / "set"
    generate_synthetic(target, **{**SMALL, "num_scenes": 1, "views_per_scene": 2})
    stamp = (target / GROUND_TRUTH_FILE).stat().st_mtime_ns
    time.sleep(0.01)
    generate_synthetic(target, **{**SMALL, "num_scenes": 1, "views_per_scene": 2})
    assert (target / GROUND_TRUTH_FILE).stat().st_mtime_ns == stamp, "a complete set is not rewritten"
    with pytest.raises(RkitError, match="other parameters.*--overwrite"):
        generate_synthetic(target, **{**SMALL, "num_scenes": 1, "views_per_scene": 3})
    generate_synthetic(target, **{**SMALL, "num_scenes": 1, "views_per_scene": 3}, overwrite=True)
    assert len(list((target / "images").rglob("*.jpg"))) == 3
    # a set of the same parameters from another format version is regenerated, not refused
    truth = json.loads((target / GROUND_TRUTH_FILE).read_text())
    truth["version"] = 0
    (target / GROUND_TRUTH_FILE).write_text(json.dumps(truth))
    generate_synthetic(target, **{**SMALL, "num_scenes": 1, "views_per_scene": 3})
    assert json.loads((target / GROUND_TRUTH_FILE).read_text())["version"] >= 1
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(RkitError, match="other files"):
        generate_synthetic(tmp_path / "busy", **SMALL)


def test_interrupted_run_resumes_from_staging(small_set: Path, tmp_path: Path) -> None:
    from retrievalkit.synth import _params_digest

    params = resolve_params("tiny", num_scenes=2, views_per_scene=3, image_size=(160, 120))
    staging = tmp_path / f".resumed.partial-{_params_digest(params)}"
    (staging / "images/scene00").mkdir(parents=True)
    done = small_set / "images/scene00/view00.jpg"
    (staging / "images/scene00/view00.jpg").write_bytes(done.read_bytes())
    os.utime(staging / "images/scene00/view00.jpg", (1, 1))  # marks the file as not re-rendered
    out = generate_synthetic(tmp_path / "resumed", **SMALL)
    assert not staging.exists()
    assert (out / "images/scene00/view00.jpg").stat().st_mtime == 1
    assert _files(out) == _files(small_set)


def test_bad_parameters_say_what_to_do() -> None:
    with pytest.raises(RkitError, match="views_per_scene must be >= 2"):
        resolve_params("tiny", views_per_scene=1)
    with pytest.raises(RkitError, match="Unknown synthetic preset 'huge'.*default, tiny"):
        resolve_params("huge")
    with pytest.raises(RkitError, match="Unknown synthetic dataset parameter 'colour'"):
        resolve_params("tiny", colour=3)


# -- geometry: hand-computed cases ----------------------------------------------------------------
def _camera_looking_north(width: int = 100, height: int = 80, focal: float = 100.0) -> Camera:
    """A camera at (0, 0, 1) looking along +y (north), no roll."""
    centre = np.array([0.0, 0.0, 1.0])
    R = look_at(centre, np.array([0.0, 10.0, 1.0]))
    K = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
    return Camera(K, R, -R @ centre, width, height)


def _wall(name: str, y: float, x0: float, x1: float, facing_south: bool = True) -> Plane:
    # u along +x, v up: normal = u x v = (0, -1, 0) faces the camera (south)
    u = np.array([1.0, 0, 0]) if facing_south else np.array([-1.0, 0, 0])
    origin = np.array([x0 if facing_south else x1, y, 0.0])
    return Plane(name, origin, u, np.array([0, 0, 1.0]), x1 - x0, 2.0, "wall")


def test_camera_convention_hand_computed() -> None:
    camera = _camera_looking_north()
    np.testing.assert_allclose(camera.R, [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-12)
    # a point 5 ahead, 1 right, 0.5 up: u = 100 * 1/5 + 50 = 70, v = 100 * -0.5/5 + 40 = 30
    uv, z = camera.project(np.array([[1.0, 5.0, 1.5]]))
    np.testing.assert_allclose(uv, [[70.0, 30.0]])
    np.testing.assert_allclose(z, [5.0])
    # roll rotates the image about the optical axis: +90 degrees maps "right" to "down"
    rolled = look_at(np.zeros(3), np.array([0.0, 1.0, 0.0]), roll=math.pi / 2)
    np.testing.assert_allclose(rolled @ np.array([1.0, 0, 0]), [0, 1, 0], atol=1e-12)


def test_visible_points_front_back_occlusion_and_frustum() -> None:
    camera = _camera_looking_north()
    far_wall = _wall("far", 6.0, -2.0, 2.0)
    near_wall = _wall("near", 3.0, 0.5, 1.5)
    back_wall = _wall("back", 5.0, -3.0, -2.5, facing_south=False)
    planes = [far_wall, near_wall, back_wall]
    points = np.array([
        [-1.0, 6.0, 1.0],  # far wall, unobstructed -> visible at depth 6
        [1.6, 6.0, 1.2],   # far wall, behind the near wall: ray crosses y=3 at x=0.8 -> hidden
        [1.0, 3.0, 1.0],   # near wall -> visible at depth 3
        [-2.8, 5.0, 1.0],  # a wall seen from behind -> not visible
        [0.0, -2.0, 1.0],  # behind the camera -> not visible
        [5.0, 6.0, 1.0],   # u = 100 * 5/6 + 50 = 133 > 100: outside the image
    ])
    owners = np.array([0, 0, 1, 2, 0, 0])
    index, depth = visible_points(points, owners, planes, camera)
    np.testing.assert_array_equal(index, [0, 2])
    np.testing.assert_allclose(depth, [6.0, 3.0])


def test_rendered_plane_covers_its_projection() -> None:
    """Renderer and Camera.project agree: a white plane fills exactly its projected quadrilateral."""
    params = resolve_params("tiny", image_size=(100, 80), views_per_scene=2, supersample=4,
                            noise_sigma=0.0)
    camera = _camera_looking_north()
    R = look_at(camera.centre, np.array([0.5, 10.0, 1.6]), roll=0.2)  # a tilted, rolled view
    camera = Camera(camera.K, R, -R @ camera.centre, 100, 80)
    plane = Plane("board", np.array([-1.0, 6.0, 0.5]), np.array([math.cos(0.4), math.sin(0.4), 0]),
                  np.array([0, 0, 1.0]), 2.5, 1.5, "panel")
    # light-grey plane on a grey background: nothing clips under the view's exposure change
    def render(planes: list[Plane]) -> np.ndarray:
        grey = np.full(3, 0.3)
        scene = Scene("s", 0, planes, [np.full((8, 8, 3), 0.7, np.float32)] * len(planes),
                      [1.0] * len(planes), (grey, grey), grey, [camera, camera], np.zeros((1, 3)),
                      np.array([0, 0, 1.0]))
        return render_view(scene, 0, params).astype(float).mean(axis=2)

    image = render([plane])
    background = render([])
    wall = render([Plane("wall", np.array([-50.0, 9.0, -50.0]), np.array([1.0, 0, 0]),
                         np.array([0, 0, 1.0]), 100.0, 100.0, "wall")])  # covers every pixel
    assert (wall > background + 70).all()
    corners = np.array([plane.origin + a * plane.u + b * plane.v
                        for a, b in [(0, 0), (plane.width, 0), (plane.width, plane.height), (0, plane.height)]])
    uv, z = camera.project(corners)
    assert (z > 0).all() and (uv >= 0).all() and (uv[:, 0] < 100).all() and (uv[:, 1] < 80).all()
    x, y = uv[:, 0], uv[:, 1]
    polygon_area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    # each pixel is background + (plane - background) x the fraction of it the plane covers
    covered = (image - background) / (wall - background)
    assert covered.sum() == pytest.approx(polygon_area, rel=0.005)
    # ... and its centroid is the quadrilateral's (this catches a half-pixel convention slip:
    # the centre of pixel (col, row) is at (col + 0.5, row + 0.5))
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y
    signed_area = cross.sum() / 2
    true_centroid = [((x + np.roll(x, -1)) * cross).sum() / (6 * signed_area),
                     ((y + np.roll(y, -1)) * cross).sum() / (6 * signed_area)]
    rows, cols = np.mgrid[0:80, 0:100]
    rendered_centroid = [((cols + 0.5) * covered).sum() / covered.sum(),
                         ((rows + 0.5) * covered).sum() / covered.sum()]
    np.testing.assert_allclose(rendered_centroid, true_centroid, atol=0.05)
    # pixels whose centre is well inside / outside the quadrilateral are covered / not
    centroid = uv.mean(axis=0)
    assert covered[int(centroid[1]), int(centroid[0])] == pytest.approx(1.0, abs=0.02)
    assert abs(covered[1, 1]) < 0.02 and abs(covered[78, 98]) < 0.02


# -- the ground-truth training database ---------------------------------------------------------
def test_ground_truth_database_is_consistent(small_set: Path, small_truth) -> None:
    db = small_truth
    truth = json.loads((small_set / GROUND_TRUTH_FILE).read_text())
    assert len(db) == 6 and db.root == small_set / "images"
    np.testing.assert_array_equal(db.clusters, [0, 0, 0, 1, 1, 1])
    assert all(db.image_path(i).is_file() for i in range(len(db)))
    points = synthetic_points(small_set)
    xyz = points.xyz
    for i, image in enumerate(truth["images"]):
        camera = Camera(np.array(image["K"]), np.array(image["R"]), np.array(image["t"]), 160, 120)
        assert db.focals[i] == 192.0
        np.testing.assert_allclose(db.centres[i], camera.centre)
        ids = db.point_ids[i]
        assert len(ids) > 30, "every view sees a good part of its scene"
        uv, z = camera.project(xyz[ids])
        # every point seen by an image projects inside it, in front, at the recorded depth
        assert (uv[:, 0] >= 0).all() and (uv[:, 0] < 160).all()
        assert (uv[:, 1] >= 0).all() and (uv[:, 1] < 120).all()
        np.testing.assert_allclose(z, db.point_depths[i])
        assert (z > 0).all()
        # points of the image's own scene only
        assert set(points.scene[ids]) == {image["scene"]}
        owner_scene = np.array([n.split("/")[0] for n in points.plane_names])[points.plane[ids]]
        assert set(owner_scene) == {f"scene{image['scene']:02d}"}


def test_ground_truth_pair_quantities(small_set: Path, small_truth) -> None:
    # pure geometric visibility: every view of a scene sees part of what the others see
    geometric = synthetic_ground_truth(small_set, min_view_cosine=0.0, min_pixels=0.0)
    for q in range(6):
        assert set(geometric.co_observing(q).tolist()) == ({0, 1, 2} if q < 3 else {3, 4, 5}) - {q}
        assert len(geometric.point_ids[q]) > len(small_truth.point_ids[q])
    db = small_truth  # the default detectability model keeps a subset of those points
    for q in range(6):
        assert np.isin(db.point_ids[q], geometric.point_ids[q]).all()
        members = set(db.co_observing(q).tolist())
        assert members and members <= ({0, 1, 2} if q < 3 else {3, 4, 5}) - {q}
        assert db.shared_points(q, 3 if q < 3 else 0) == 0  # never across scenes
        for i in members:
            assert 0 < db.overlap(q, i) <= 1
            assert 1.0 <= db.scale_change(q, i) < 3.0


def test_detectability_model_hand_computed() -> None:
    """A point is kept when its detail appears >= min_pixels and the surface is <= acos(cos) oblique."""
    camera = _camera_looking_north()  # focal 100
    wall = _wall("far", 5.0, -2.0, 2.0)
    points = np.array([[0.0, 5.0, 1.0]] * 3)
    sizes = np.array([0.04, 0.06, 0.2])  # appear 0.8, 1.2 and 4 px large at depth 5
    index, _ = visible_points(points, np.zeros(3, int), [wall], camera, 0.5, sizes, min_pixels=1.0)
    np.testing.assert_array_equal(index, [1, 2])
    # seen at 60 + a bit degrees (cos < 0.5) the wall is too oblique; at 59 degrees it is not
    for degrees, expected in ((61, []), (59, [0])):
        angle = math.radians(degrees)
        centre = np.array([-5 * math.sin(angle), 5 - 5 * math.cos(angle), 1.0])
        R = look_at(centre, np.array([0.0, 5.0, 1.0]))
        oblique = Camera(camera.K, R, -R @ centre, 100, 80)
        index, _ = visible_points(points[:1], np.zeros(1, int), [wall], oblique, 0.5)
        np.testing.assert_array_equal(index, expected)
    # Pareto sizes: the share of details larger than s is (min_size / s)^2
    _, _, drawn = surface_points([wall], 0.01, np.random.default_rng(0), min_size=0.01)
    assert len(drawn) == 400 * 200
    assert (drawn >= 0.01).all()
    assert (drawn > 0.02).mean() == pytest.approx(0.25, abs=0.01)
    assert (drawn > 0.05).mean() == pytest.approx(0.04, abs=0.003)


def test_default_cameras_span_the_requested_scale_change() -> None:
    params = resolve_params("default")
    scene = build_scene(params, 0)
    assert len(scene.cameras) == 12
    centres = np.array([c.centre for c in scene.cameras])
    forward = np.array([c.R[2] for c in scene.cameras])
    # each camera aims at a point of the facade line y = 0; its horizontal distance to that
    # point varies by max_scale_change = 2 across the views
    reach = -centres[:, 1] / forward[:, 1]
    aim = centres + reach[:, None] * forward
    distance = np.linalg.norm((aim - centres)[:, :2], axis=1)
    assert distance.max() / distance.min() == pytest.approx(2.0)
    # the arc is ordered by azimuth, from the left to the right of the building front
    azimuth = np.arctan2(-forward[:, 0], forward[:, 1])
    assert np.all(np.diff(azimuth) > 0)


# -- command line ------------------------------------------------------------------------------
def test_cli_synth_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from retrievalkit.cli import main

    main(["data", "synth", "--out", str(tmp_path / "cli"), "--preset", "tiny", "--scenes", "1",
          "--views", "2", "--size", "96x64"])
    out = capsys.readouterr().out
    assert "1 scenes x 2 views, 96x64 px, seed 0" in out
    assert Image.open(tmp_path / "cli/images/scene00/view01.jpg").size == (96, 64)
    main(["data", "synth", "--out", str(tmp_path / "cli"), "--preset", "tiny", "--scenes", "1",
          "--views", "2", "--size", "96x64"])
    assert "already complete" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "synth", "--out", str(tmp_path / "bad"), "--size", "96"])
    assert exit_info.value.code == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


# -- optional: pycolmap reconstructs it ---------------------------------------------------------
@pytest.mark.slow
def test_pycolmap_reconstructs_two_tiny_scenes(tmp_path: Path) -> None:
    pycolmap = pytest.importorskip("pycolmap")
    data = generate_synthetic(tmp_path / "data", preset="tiny", num_scenes=2, progress=False)
    database = tmp_path / "db.db"
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = 2
    pycolmap.extract_features(database, data / "images", extraction_options=extraction,
                              device=pycolmap.Device.cpu)
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = 2
    pycolmap.match_exhaustive(database, matching_options=matching, device=pycolmap.Device.cpu)
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = 2
    options.min_model_size = 3  # COLMAP's default (10) drops every later model of < 10 views
    models = pycolmap.incremental_mapping(database, data / "images", tmp_path / "sparse", options)
    registered = {}
    for model in models.values():
        scenes = {img.name.split("/")[0] for img in model.images.values()}
        assert len(scenes) == 1, "a model never mixes scenes"
        scene = scenes.pop()
        registered[scene] = max(registered.get(scene, 0), model.num_reg_images())
    assert registered == {"scene00": 8, "scene01": 8}
