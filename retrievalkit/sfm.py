"""Structure-from-Motion on an unordered photo folder -> training database (docs/definitions.md §4).

The pipeline of Radenović et al. 2016 (section 3: "3D models ... from an unordered image
collection"), with pycolmap (COLMAP) doing the geometry:

1. ``features``  SIFT keypoints and descriptors of every readable image (unreadable images are
   reported and skipped).
2. ``pairs``     which image pairs to match: all of them (exhaustive) for small folders, else
   the top-k neighbours of every image by an off-the-shelf global descriptor (as retrieval-
   guided SfM pipelines do), made symmetric.
3. ``matches``   SIFT matching and geometric verification of those pairs.
4. ``mapping``   incremental mapping of each connected group of the match graph; every
   reconstructed 3D model is a cluster (models sharing an image are merged into one).
5. ``database``  the training database (:class:`~retrievalkit.trainingdb.TrainingDatabase`) with
   each registered image's model, camera, 3D points and their depths, plus the pair statistics.

Each finished stage leaves a marker ``stages/<stage>.json`` (options it ran with, wall time) in
the output folder. Re-running the same command skips finished stages; a stage whose options
changed is re-run together with every stage after it. COLMAP itself skips images and pairs
already in its database, so an interrupted extraction or matching resumes where it stopped.

Output folder layout::

    colmap.db            the COLMAP database (features, matches)
    pairs.txt            the image pairs matched (one "name1 name2" per line)
    models/<k>/          the reconstructed models, COLMAP binary format, largest first
    database/            the training database (trainingdb.json + trainingdb.npz; docs/sfm.md)
    report.json          stages, timings, registered and unregistered images
    stages/*.json        stage markers
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_text_atomic
from .dbpkl import import_dbpkl  # re-exported: rkit sfm --import-dbpkl
from .errors import RkitError
from .trainingdb import JSON_NAME, TrainingDatabase, load_database

STAGES = ("features", "pairs", "matches", "mapping", "database")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclasses.dataclass
class SfmOptions:
    """What ``rkit sfm`` can be told; the defaults suit a folder of a few hundred photos."""

    #: SIFT on images resized so that their longest side is at most this (pixels).
    image_size: int = 1024
    #: Maximum number of SIFT features per image.
    max_features: int = 8192
    #: ``auto`` (exhaustive below ``exhaustive_below`` images, else retrieval), ``exhaustive``,
    #: ``retrieval``.
    pairs: str = "auto"
    #: Neighbours per image for retrieval-guided pairs.
    k: int = 20
    #: With ``pairs="auto"``, folders with at most this many images are matched exhaustively.
    exhaustive_below: int = 50
    #: Global-descriptor model for retrieval pairs: a saved model folder or
    #: ``BACKBONE,POOLING`` (off-the-shelf ImageNet weights).
    descriptor_model: str = "efficientnet-lite0,gem"
    #: Image size for the retrieval descriptors.
    descriptor_image_size: int = 448
    #: Smallest model (registered images) that is kept; COLMAP's own default is 10.
    min_model_size: int = 3
    #: Map each group of images linked by verified matches separately (see
    #: :func:`match_graph_components`); False: one mapper run over all images, as COLMAP does.
    split_components: bool = True
    #: Mapper: minimum triangulation angle of the initial pair (degrees; COLMAP default 16).
    #: Lowered so forward-moving sequences (a street walked along) can start a model: with
    #: COLMAP's defaults the landmarks benchmark registers 88/124 and loses Lund entirely;
    #: with these three relaxed values 118/124 (docs/benchmarks.md, SfM section).
    init_min_tri_angle: float = 4.0
    #: Mapper: largest share of forward motion allowed for the initial pair (COLMAP default 0.95).
    init_max_forward_motion: float = 0.999
    #: Mapper: minimum inliers to register an image (COLMAP default 30).
    abs_pose_min_num_inliers: int = 15
    #: Mapper: minimum verified matches for a pair to be used (COLMAP default 15).
    min_num_matches: int = 15
    #: ``auto`` (one camera per image size / EXIF focal), ``single``, ``per_image``, ``per_folder``.
    camera_mode: str = "auto"
    #: CPU threads for COLMAP (-1 = all).
    num_threads: int = -1
    #: Seed for the mapper's random choices (-1 = COLMAP's default, not reproducible).
    seed: int = 0
    #: torch device for the retrieval descriptors.
    device: str = "auto"

    def stage_options(self, stage: str) -> dict[str, Any]:
        """The options that influence ``stage`` (a change re-runs it and later stages)."""
        keys = {
            "features": ("image_size", "max_features", "camera_mode"),
            "pairs": (),  # the resolved mode and, for retrieval, k and the descriptor: see run_sfm
            "matches": ("min_num_matches",),
            "mapping": ("min_model_size", "split_components", "init_min_tri_angle",
                        "init_max_forward_motion", "abs_pose_min_num_inliers", "min_num_matches",
                        "seed"),
            "database": ("split_components",),
        }[stage]
        return {key: getattr(self, key) for key in keys}


@dataclasses.dataclass
class SfmResult:
    """What :func:`run_sfm` produced."""

    out_dir: Path
    database: TrainingDatabase
    registered: list[str]
    unregistered: list[str]
    unreadable: list[tuple[str, str]]
    timings: dict[str, float]
    skipped_stages: list[str]
    num_models: int


# -- images ---------------------------------------------------------------------------------
def find_images(images_dir: str | Path) -> list[str]:
    """Image files under ``images_dir`` (recursive, sorted), relative to it, '/'-separated."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise RkitError(f"{images_dir} is not a folder: give the folder of photos to reconstruct.")
    names = sorted(p.relative_to(images_dir).as_posix() for p in images_dir.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(images_dir).parts))
    if not names:
        raise RkitError(
            f"no images in {images_dir} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}, "
            f"recursively): point `rkit sfm` at the folder holding the photos."
        )
    return names


def check_images(images_dir: Path, names: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Split ``names`` into images PIL can decode and (name, reason) for those it cannot."""
    from PIL import Image

    good: list[str] = []
    bad: list[tuple[str, str]] = []
    for name in names:
        try:
            with Image.open(images_dir / name) as image:
                image.load()
                if min(image.size) < 16:
                    raise ValueError(f"too small ({image.size[0]}x{image.size[1]} px)")
            good.append(name)
        except Exception as exc:  # noqa: BLE001 - any decoding failure means: skip this image
            bad.append((name, f"{type(exc).__name__}: {exc}"))
    return good, bad


# -- pairs ------------------------------------------------------------------------------------
def exhaustive_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of images."""
    return [(names[a], names[b]) for a in range(len(names)) for b in range(a + 1, len(names))]


def neighbour_pairs(descriptors: np.ndarray, names: Sequence[str], k: int) -> list[tuple[str, str]]:
    """Unordered pairs (a, b) where b is among the ``k`` nearest descriptors of a or vice versa.

    ``descriptors`` are L2-normalised rows; nearness is the dot product (exact search).
    """
    descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
    n = len(names)
    k = max(0, min(k, n - 1))
    if k == 0:
        return []
    from .index import build_index, search

    _, ids = search(build_index(descriptors, "flat"), descriptors, k + 1)
    chosen: set[tuple[int, int]] = set()
    for a in range(n):
        for b in [int(x) for x in ids[a] if int(x) != a and int(x) >= 0][:k]:
            chosen.add((min(a, b), max(a, b)))
    return [(names[a], names[b]) for a, b in sorted(chosen)]


def retrieval_descriptors(images_dir: Path, names: Sequence[str], options: SfmOptions,
                          progress: bool = True) -> np.ndarray:
    """Global descriptors of ``names`` with the off-the-shelf (or saved) ``descriptor_model``."""
    from .extract import extract_descriptors
    from .model import ModelConfig, build_model, load_model

    spec = options.descriptor_model
    if Path(spec).is_dir():
        model = load_model(spec)
    else:
        parts = [p.strip() for p in spec.split(",")]
        if len(parts) != 2:
            raise RkitError(
                f"--descriptor-model {spec!r}: give a saved model folder or BACKBONE,POOLING "
                f"(e.g. efficientnet-lite0,gem)"
            )
        model = build_model(ModelConfig(parts[0], parts[1], "imagenet"))
    model.eval()
    result = extract_descriptors(model, list(names), root=images_dir,
                                 image_size=options.descriptor_image_size, device=options.device,
                                 progress=progress, num_workers=0)
    if len(result.paths) != len(names):
        # an image COLMAP reads but the descriptor extractor does not: a zero row (similarity 0
        # to everything) keeps the rows aligned with ``names``; it still gets k (arbitrary) pairs.
        lookup = {str(p): row for row, p in enumerate(result.paths)}
        full = np.zeros((len(names), result.descriptors.shape[1]), np.float32)
        for row, name in enumerate(names):
            if name in lookup:
                full[row] = result.descriptors[lookup[name]]
        return full
    return np.asarray(result.descriptors, np.float32)


# -- building the training database from reconstructions -------------------------------------
def database_from_reconstructions(reconstructions: Sequence[Any], root: Path | None = None,
                                  meta: dict[str, Any] | None = None,
                                  groups: Sequence[Sequence[str]] | None = None) -> TrainingDatabase:
    """A :class:`TrainingDatabase` from pycolmap reconstructions, one cluster per model.

    Cluster ids follow the order given (largest first in :func:`run_sfm`). An image registered
    in more than one model (COLMAP allows a small overlap between models) is kept in the first
    one only, and models that share an image are one place: they become one cluster (so that
    their images are never each other's negatives), while their 3D points stay apart (images
    from two such models share no point, so neither is the other's positive). With ``groups``
    (the connected groups of the match graph), models whose images lie in one group are one
    cluster too: verified matches link them, so they show one place that COLMAP could not
    reconstruct in one piece.
    3D point ids are made unique across models (``model_offset + point3D_id``).
    Depth of a point in an image = its z coordinate in that camera's frame.
    """
    cluster_of_model = _merge_models_sharing_images(reconstructions, groups)
    images: list[str] = []
    clusters: list[int] = []
    point_ids: list[np.ndarray] = []
    point_depths: list[np.ndarray] = []
    centres: list[np.ndarray] = []
    focals: list[float] = []
    seen: set[str] = set()
    offset = 0
    for model, rec in enumerate(reconstructions):
        xyz = {pid: np.asarray(p.xyz, np.float64) for pid, p in rec.points3D.items()}
        for image_id in sorted(rec.reg_image_ids(), key=lambda i: rec.images[i].name):
            image = rec.images[image_id]
            if image.name in seen:
                continue
            seen.add(image.name)
            ids = sorted({int(p.point3D_id) for p in image.points2D if p.has_point3D()})
            pose = image.cam_from_world()
            if ids:
                world = np.stack([xyz[i] for i in ids])
                cam = world @ pose.rotation.matrix().T + np.asarray(pose.translation)
                depths = cam[:, 2]
            else:
                depths = np.zeros(0)
            images.append(image.name)
            clusters.append(cluster_of_model[model])
            point_ids.append(np.asarray(ids, np.int64) + offset)
            point_depths.append(depths)
            centres.append(np.asarray(image.projection_center(), np.float64))
            focals.append(float(rec.cameras[image.camera_id].mean_focal_length()))
        offset += (max(rec.points3D.keys()) + 1) if rec.num_points3D() else 0
    return TrainingDatabase(
        images=images, clusters=np.asarray(clusters, np.int64), point_ids=point_ids,
        point_depths=point_depths, centres=np.asarray(centres).reshape(-1, 3),
        focals=np.asarray(focals), root=root, meta=dict(meta or {}),
    )


def _merge_models_sharing_images(reconstructions: Sequence[Any],
                                 groups: Sequence[Sequence[str]] | None = None) -> list[int]:
    """Cluster id of every model: models linked by a shared registered image (or by images in
    one of ``groups``) get the id of the first of them; ids are consecutive in order of first
    appearance."""
    parent = list(range(len(reconstructions)))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    group_of = {name: ("group", k) for k, group in enumerate(groups or []) for name in group}
    owner: dict[Any, int] = {}
    for model, rec in enumerate(reconstructions):
        for image_id in rec.reg_image_ids():
            name = rec.images[image_id].name
            for key in (name, group_of.get(name)):
                if key is None:
                    continue
                if key in owner:
                    a, b = root(owner[key]), root(model)
                    parent[max(a, b)] = min(a, b)
                else:
                    owner[key] = model
    ids: dict[int, int] = {}
    return [ids.setdefault(root(m), len(ids)) for m in range(len(reconstructions))]


# -- stage bookkeeping ------------------------------------------------------------------------
class _Stages:
    """Markers ``stages/<stage>.json`` recording finished stages and the options they ran with."""

    def __init__(self, out_dir: Path, options: SfmOptions, log: Callable[[str], None]) -> None:
        self.dir = out_dir / "stages"
        self.options = options
        self.log = log
        self.invalid_from: int | None = None
        self.changed: set[str] = set()

    def marker(self, stage: str) -> Path:
        return self.dir / f"{stage}.json"

    def done(self, stage: str, extra: dict[str, Any] | None = None) -> bool:
        """Whether ``stage`` finished earlier with the same options (and all earlier ones did)."""
        index = STAGES.index(stage)
        if self.invalid_from is not None and index >= self.invalid_from:
            return False
        path = self.marker(stage)
        if not path.is_file():
            self.invalid_from = index
            return False
        recorded = json.loads(path.read_text())
        wanted = {**self.options.stage_options(stage), **(extra or {})}
        if recorded.get("options") != json.loads(json.dumps(wanted)):
            self.log(f"[{stage}] options changed since the last run: redoing it and later stages")
            self.invalid_from = index
            self.changed.add(stage)
            for later in STAGES[index:]:
                self.marker(later).unlink(missing_ok=True)
            return False
        return True

    def redo(self, stage: str) -> None:
        """Mark ``stage`` (and so every later one) as to be run again."""
        index = STAGES.index(stage)
        self.invalid_from = index if self.invalid_from is None else min(self.invalid_from, index)

    def finish(self, stage: str, seconds: float, extra: dict[str, Any] | None = None,
               info: dict[str, Any] | None = None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        record = {"stage": stage, "options": {**self.options.stage_options(stage), **(extra or {})},
                  "seconds": round(seconds, 2), **(info or {})}
        write_text_atomic(self.marker(stage), json.dumps(record, indent=1) + "\n")

    def seconds(self, stage: str) -> float:
        path = self.marker(stage)
        return float(json.loads(path.read_text()).get("seconds", 0.0)) if path.is_file() else 0.0


def _camera_mode(name: str) -> Any:
    import pycolmap

    modes = {"auto": pycolmap.CameraMode.AUTO, "single": pycolmap.CameraMode.SINGLE,
             "per_image": pycolmap.CameraMode.PER_IMAGE, "per_folder": pycolmap.CameraMode.PER_FOLDER}
    if name not in modes:
        raise RkitError(f"unknown camera mode {name!r}: use one of {', '.join(modes)}")
    return modes[name]


def match_graph_components(colmap_db: Path, names: Sequence[str], min_inliers: int) -> list[list[str]]:
    """Groups of images linked by verified pairs (>= ``min_inliers`` inliers), largest first.

    Each group is mapped on its own: images of different groups cannot end in one model, and a
    hard group (e.g. a forward-moving street sequence) gets the mapper's full set of attempts
    at an initial pair instead of the ones left after the other groups.
    """
    import pycolmap
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    with pycolmap.Database.open(colmap_db) as db:
        name_of = {image.image_id: image.name for image in db.read_all_images()}
        pair_ids, inliers = db.read_two_view_geometry_num_inliers()
    index = {name: k for k, name in enumerate(names)}
    edges = []
    for pair_id, count in zip(pair_ids, inliers):
        if count < min_inliers:
            continue
        a, b = pycolmap.pair_id_to_image_pair(pair_id)
        if name_of.get(a) in index and name_of.get(b) in index:
            edges.append((index[name_of[a]], index[name_of[b]]))
    edges_arr = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(edges_arr)), (edges_arr[:, 0], edges_arr[:, 1])), shape=(len(names),) * 2)
    _, labels = connected_components(graph, directed=False)
    groups: dict[int, list[str]] = {}
    for name, label in zip(names, labels):
        groups.setdefault(int(label), []).append(name)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))


def _drop_other_matches(colmap_db: Path, pairs: Sequence[tuple[str, str]]) -> int:
    """Delete from the COLMAP database the matches of pairs not in ``pairs`` (left by a run
    with other pair options), so the mapper sees only the chosen pairs; the matches of pairs
    still wanted are kept and not recomputed. Returns how many pairs were dropped."""
    import pycolmap

    if not colmap_db.exists():
        return 0
    with pycolmap.Database.open(colmap_db) as db:
        ids = {image.name: image.image_id for image in db.read_all_images()}
        wanted = {pycolmap.image_pair_to_pair_id(ids[a], ids[b]) for a, b in pairs if a in ids and b in ids}
        stored, _ = db.read_two_view_geometry_num_inliers()
        matched, _ = db.read_all_matches()
        stale = {int(p) for p in list(stored) + list(matched)} - wanted
        for pair_id in stale:
            a, b = pycolmap.pair_id_to_image_pair(pair_id)
            if db.exists_matches(a, b):
                db.delete_matches(a, b)
            if db.exists_two_view_geometry(a, b):
                db.delete_two_view_geometry(a, b)
    return len(stale)


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


# -- the pipeline -----------------------------------------------------------------------------
def run_sfm(images_dir: str | Path, out_dir: str | Path, options: SfmOptions | None = None, *,
            progress: bool = True, log: Callable[[str], None] | None = None,
            stop_after: str | None = None, verbose: bool = False) -> SfmResult:
    """Reconstruct ``images_dir`` with pycolmap and write the training database to ``out_dir``.

    Re-running with the same ``out_dir`` reuses finished stages (see the module docstring).
    ``stop_after`` (a stage name) ends the run after that stage, e.g. to inspect the pairs.
    ``verbose`` lets COLMAP's own log through (otherwise only its errors).
    Raises :class:`RkitError` when the folder has no readable image or no model can be built.
    """
    import pycolmap
    from tqdm import tqdm

    options = options or SfmOptions()
    log = log or (lambda message: print(message, flush=True))
    images_dir = Path(images_dir).resolve()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if options.pairs not in ("auto", "exhaustive", "retrieval"):
        raise RkitError(f"--pairs {options.pairs!r}: use auto, exhaustive or retrieval")
    if stop_after is not None and stop_after not in STAGES:
        raise RkitError(f"stop_after {stop_after!r}: use one of {', '.join(STAGES)}")
    pycolmap.logging.minloglevel = 0 if verbose else 2
    stages = _Stages(out_dir, options, log)
    colmap_db = out_dir / "colmap.db"
    timings: dict[str, float] = {}
    skipped: list[str] = []

    names = find_images(images_dir)
    names, unreadable = check_images(images_dir, names)
    for name, reason in unreadable:
        log(f"skipping unreadable image {name}: {reason}")
    if len(names) < 2:
        raise RkitError(
            f"{images_dir} has {len(names)} readable image(s); SfM needs at least two photos of "
            f"the same place. Add photos (or fix the unreadable ones listed above)."
        )
    spaced = [n for n in names if " " in n]
    if spaced:  # checked before any work: the pairs file COLMAP matches is "name1 name2" per line
        raise RkitError(f"image file names with spaces cannot be matched by a pairs file ({spaced[0]!r}"
                        f"{f' and {len(spaced) - 1} more' if len(spaced) > 1 else ''}); rename them.")
    extra_features = {"images": len(names)}

    components: list[list[str]] | None = None

    def graph_components() -> list[list[str]]:
        """The match graph's groups (:func:`match_graph_components`), read once per run."""
        nonlocal components
        if components is None:
            components = match_graph_components(colmap_db, names, options.min_num_matches)
        return components

    # 1. features ----------------------------------------------------------------------------
    if stages.done("features", extra_features):
        skipped.append("features")
        log(f"[features] done earlier ({stages.seconds('features'):.1f} s), reusing {colmap_db.name}")
    else:
        if "features" in stages.changed and colmap_db.exists():
            colmap_db.unlink()  # features of other options: start afresh
        start = time.perf_counter()
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.max_image_size = options.image_size
        extraction.num_threads = options.num_threads
        extraction.sift.max_num_features = options.max_features
        log(f"[features] SIFT on {len(names)} images (longest side <= {options.image_size} px)")
        bar = tqdm(total=len(names), desc="features", unit="img", disable=not progress)
        for chunk in _chunks(names, 16):
            pycolmap.extract_features(colmap_db, images_dir, image_names=list(chunk),
                                      camera_mode=_camera_mode(options.camera_mode),
                                      extraction_options=extraction, device=pycolmap.Device.cpu)
            bar.update(len(chunk))
        bar.close()
        timings["features"] = time.perf_counter() - start
        with pycolmap.Database.open(colmap_db) as db:
            with_features = {img.name for img in db.read_all_images() if db.num_keypoints_for_image(img.image_id) > 0}
        no_features = [n for n in names if n not in with_features]
        stages.finish("features", timings["features"], extra_features,
                      {"images_without_features": no_features})
        log(f"[features] {timings['features']:.1f} s")
    if stop_after == "features":
        return _partial_result(out_dir, timings, skipped, unreadable)

    # 2. pairs ---------------------------------------------------------------------------------
    pairs_file = out_dir / "pairs.txt"
    mode = options.pairs
    if mode == "auto":
        mode = "exhaustive" if len(names) <= options.exhaustive_below else "retrieval"
    extra_pairs: dict[str, Any] = {"mode": mode, "images": len(names)}
    if mode == "retrieval":
        extra_pairs.update(k=options.k, descriptor_model=options.descriptor_model,
                           descriptor_image_size=options.descriptor_image_size)
    if stages.done("pairs", extra_pairs) and pairs_file.is_file():
        skipped.append("pairs")
        log(f"[pairs] done earlier ({stages.seconds('pairs'):.1f} s), reusing {pairs_file.name}")
    else:
        stages.redo("pairs")
        start = time.perf_counter()
        if mode == "exhaustive":
            pairs = exhaustive_pairs(names)
            log(f"[pairs] exhaustive: {len(pairs)} pairs")
        else:
            log(f"[pairs] retrieval: top-{options.k} neighbours by {options.descriptor_model} "
                f"at {options.descriptor_image_size} px")
            descriptors = retrieval_descriptors(images_dir, names, options, progress)
            pairs = neighbour_pairs(descriptors, names, options.k)
            log(f"[pairs] {len(pairs)} pairs (exhaustive would be {len(names) * (len(names) - 1) // 2})")
        write_text_atomic(pairs_file, "".join(f"{a} {b}\n" for a, b in pairs))
        if "features" in skipped:
            dropped = _drop_other_matches(colmap_db, pairs)
            if dropped:
                log(f"[pairs] dropped the matches of {dropped} pairs of an earlier run not in the new list")
        timings["pairs"] = time.perf_counter() - start
        stages.finish("pairs", timings["pairs"], extra_pairs, {"num_pairs": len(pairs)})
        log(f"[pairs] {timings['pairs']:.1f} s")
    if stop_after == "pairs":
        return _partial_result(out_dir, timings, skipped, unreadable)

    # 3. matches -------------------------------------------------------------------------------
    if stages.done("matches"):
        skipped.append("matches")
        log(f"[matches] done earlier ({stages.seconds('matches'):.1f} s)")
    else:
        start = time.perf_counter()
        pairs = [tuple(line.split(" ", 1)) for line in pairs_file.read_text().splitlines() if line.strip()]
        matching = pycolmap.FeatureMatchingOptions()
        matching.num_threads = options.num_threads
        verification = pycolmap.TwoViewGeometryOptions()
        verification.min_num_inliers = options.min_num_matches
        log(f"[matches] matching and verifying {len(pairs)} pairs")
        bar = tqdm(total=len(pairs), desc="matches", unit="pair", disable=not progress)
        chunk_file = out_dir / "pairs.chunk.txt"
        for chunk in _chunks(pairs, 200):
            write_text_atomic(chunk_file, "".join(f"{a} {b}\n" for a, b in chunk))
            pairing = pycolmap.ImportedPairingOptions()
            pairing.match_list_path = chunk_file
            pycolmap.match_image_pairs(colmap_db, matching_options=matching, pairing_options=pairing,
                                       verification_options=verification, device=pycolmap.Device.cpu)
            bar.update(len(chunk))
        bar.close()
        chunk_file.unlink(missing_ok=True)
        timings["matches"] = time.perf_counter() - start
        with pycolmap.Database.open(colmap_db) as db:
            _, inliers = db.read_two_view_geometry_num_inliers()
        verified = sum(1 for n in inliers if n >= options.min_num_matches)
        stages.finish("matches", timings["matches"], None, {"verified_pairs": int(verified)})
        log(f"[matches] {verified} pairs with >= {options.min_num_matches} verified matches, "
            f"{timings['matches']:.1f} s")
    if stop_after == "matches":
        return _partial_result(out_dir, timings, skipped, unreadable)

    # 4. mapping -------------------------------------------------------------------------------
    models_dir = out_dir / "models"
    if stages.done("mapping") and models_dir.is_dir():
        skipped.append("mapping")
        log(f"[mapping] done earlier ({stages.seconds('mapping'):.1f} s)")
        reconstructions = [pycolmap.Reconstruction(str(d)) for d in
                           sorted(models_dir.iterdir(), key=lambda d: int(d.name)) if d.is_dir()]
    else:
        stages.redo("mapping")
        start = time.perf_counter()
        pipeline = pycolmap.IncrementalPipelineOptions()
        pipeline.min_model_size = options.min_model_size
        pipeline.min_num_matches = options.min_num_matches
        pipeline.num_threads = options.num_threads
        pipeline.multiple_models = True
        pipeline.extract_colors = False
        pipeline.random_seed = options.seed
        pipeline.mapper.init_min_tri_angle = options.init_min_tri_angle
        pipeline.mapper.abs_pose_min_num_inliers = options.abs_pose_min_num_inliers
        pipeline.mapper.init_max_forward_motion = options.init_max_forward_motion
        work = out_dir / "models.partial"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        groups = graph_components() if options.split_components else [list(names)]
        groups = [g for g in groups if len(g) >= options.min_model_size]
        log(f"[mapping] incremental mapping of {len(groups)} connected group(s) of images "
            f"({', '.join(str(len(g)) for g in groups)}), min model size {options.min_model_size}")
        bar = tqdm(total=sum(len(g) for g in groups), desc="mapping", unit="img", disable=not progress)
        found = []
        for k, group in enumerate(groups):
            pipeline.image_names = group
            (work / str(k)).mkdir()
            found += list(pycolmap.incremental_mapping(colmap_db, images_dir, work / str(k), options=pipeline,
                                                       next_image_callback=lambda: bar.update(1)).values())
        bar.close()
        reconstructions = sorted(found, key=lambda r: -r.num_reg_images())
        reconstructions = [r for r in reconstructions if r.num_reg_images() >= options.min_model_size]
        final = out_dir / "models"
        shutil.rmtree(work, ignore_errors=True)
        partial_final = out_dir / "models.new"
        shutil.rmtree(partial_final, ignore_errors=True)
        for k, rec in enumerate(reconstructions):
            (partial_final / str(k)).mkdir(parents=True)
            rec.write(str(partial_final / str(k)))
        partial_final.mkdir(exist_ok=True)
        shutil.rmtree(final, ignore_errors=True)
        partial_final.rename(final)
        timings["mapping"] = time.perf_counter() - start
        stages.finish("mapping", timings["mapping"], None,
                      {"models": [r.num_reg_images() for r in reconstructions]})
        log(f"[mapping] {len(reconstructions)} models "
            f"({', '.join(str(r.num_reg_images()) for r in reconstructions)} images), "
            f"{timings['mapping']:.1f} s")
    if not reconstructions:
        raise RkitError(
            f"no 3D model could be reconstructed from {len(names)} images in {images_dir}: they "
            f"share too few verified matches. SfM needs several overlapping photos of each place; "
            f"try --pairs exhaustive, a larger --image-size, or a smaller --min-model-size."
        )
    if stop_after == "mapping":
        return _partial_result(out_dir, timings, skipped, unreadable)

    # 5. training database ------------------------------------------------------------------------
    def not_registered(db: TrainingDatabase) -> list[str]:
        registered = set(db.images)
        return [n for n in names if n not in registered]

    database: TrainingDatabase | None = None
    if stages.done("database") and (out_dir / "database" / JSON_NAME).is_file():
        try:
            database = load_database(out_dir / "database")
            skipped.append("database")
            log(f"[database] done earlier ({stages.seconds('database'):.1f} s)")
        except RkitError as exc:  # a damaged database: build it again from the models
            log(f"[database] the stored database cannot be read ({exc}): building it again")
    if database is None:
        start = time.perf_counter()
        groups = graph_components() if options.split_components else None
        database = database_from_reconstructions(reconstructions, root=images_dir, groups=groups)
        database.meta.update({
            "source": "rkit sfm",
            "images_dir": str(images_dir),
            "options": dataclasses.asdict(options),
            "pairs_mode": mode,
            "unregistered": not_registered(database),
            "unreadable": [list(u) for u in unreadable],
        })
        database.use_pair_statistics(database.compute_pair_statistics(progress=progress))
        database.save(out_dir / "database")
        timings["database"] = time.perf_counter() - start
        stages.finish("database", timings["database"])
    registered = set(database.images)
    unregistered = not_registered(database)
    all_timings = {stage: (timings[stage] if stage in timings else stages.seconds(stage)) for stage in STAGES}
    report = {
        "images_dir": str(images_dir),
        "images": len(names) + len(unreadable),
        "registered": len(registered),
        "unregistered": unregistered,
        "unreadable": [list(u) for u in unreadable],
        "models": [int(n) for n in np.bincount(database.clusters)],
        "pairs_mode": mode,
        "seconds": {k: round(v, 2) for k, v in all_timings.items()},
        "reused_stages": skipped,
        "options": dataclasses.asdict(options),
    }
    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=1) + "\n")
    if unregistered:
        log(f"{len(unregistered)} image(s) not registered in any model: "
            + ", ".join(unregistered[:20]) + (" ..." if len(unregistered) > 20 else ""))
    log(f"training database: {len(registered)} images in {database.num_clusters} models -> "
        f"{out_dir / 'database'}")
    return SfmResult(out_dir=out_dir, database=database, registered=sorted(registered),
                     unregistered=unregistered, unreadable=unreadable, timings=all_timings,
                     skipped_stages=skipped, num_models=database.num_clusters)


def _partial_result(out_dir: Path, timings: dict[str, float], skipped: list[str],
                    unreadable: list[tuple[str, str]]) -> SfmResult:
    empty = TrainingDatabase(images=[], clusters=np.zeros(0, np.int64))
    return SfmResult(out_dir=out_dir, database=empty, registered=[], unregistered=[],
                     unreadable=unreadable, timings=timings, skipped_stages=skipped, num_models=0)


__all__ = ["SfmOptions", "SfmResult", "run_sfm", "find_images", "check_images", "exhaustive_pairs",
           "neighbour_pairs", "database_from_reconstructions", "load_database", "import_dbpkl", "STAGES"]
