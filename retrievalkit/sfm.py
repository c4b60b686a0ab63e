"""Structure-from-Motion on an unordered photo folder -> training database (docs/definitions.md §4).

The pipeline of Radenović et al. 2016 (section 3: "3D models ... from an unordered image
collection"), with pycolmap (COLMAP) doing the geometry. One function per stage:

1. ``features``  :func:`extract_features`: SIFT keypoints and descriptors of every readable
   image (unreadable images are reported and skipped).
2. ``pairs``     :func:`choose_pairs`: which image pairs to match, the union of the ``pairs``
   sources (:mod:`retrievalkit.sfmpairs`): exhaustive, the top-k neighbours of every image by
   an off-the-shelf global descriptor, sequential neighbours, an hloc pairs file.
3. ``matches``   :func:`match_pairs`: SIFT matching and geometric verification of those pairs.
4. ``mapping``   :func:`map_groups`: incremental mapping of each connected group of the match
   graph; every reconstructed 3D model is a cluster (models sharing an image are merged).
5. ``database``  :func:`build_database`: the training database
   (:class:`~retrievalkit.trainingdb.TrainingDatabase`) with each registered image's model,
   camera, 3D points and their depths, plus the pair statistics.

:func:`run_sfm` hands the stages to :func:`retrievalkit.stages.run_stages`, which keeps the
markers ``stages/<stage>.json`` (inputs it ran with, wall time, a few facts): re-running the
same command skips finished stages; a stage whose inputs changed is re-run together with every
stage after it. COLMAP itself skips images and pairs already in its database, so an
interrupted extraction or matching resumes where it stopped.

Output folder layout::

    colmap.db            the COLMAP database (features, matches)
    pairs.txt            the image pairs matched (one "name1 name2" per line, hloc's format)
    models/<k>/          the reconstructed models, COLMAP binary format, largest first
    database/            the training database (trainingdb.json + trainingdb.npz; docs/sfm.md)
    report.json          stages, timings, registered and unregistered images
    stages/*.json        stage markers
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_text_atomic
from .dbpkl import import_dbpkl  # re-exported: rkit sfm --import-dbpkl
from .errors import RkitError
from .sfmpairs import exhaustive_pairs, neighbour_pairs, resolve_sources, select_pairs, source_inputs
from .stages import Stage, StagesDone, run_stages
from .trainingdb import TrainingDatabase, load_database

STAGES = ("features", "pairs", "matches", "mapping", "database")


@dataclasses.dataclass
class SfmOptions:
    """What ``rkit sfm`` can be told; the defaults suit a folder of a few hundred photos."""

    #: SIFT on images resized so that their longest side is at most this (pixels).
    image_size: int = 1024
    #: Maximum number of SIFT features per image.
    max_features: int = 8192
    #: Which pairs to match (:mod:`retrievalkit.sfmpairs`): ``auto`` (exhaustive up to
    #: ``exhaustive_below`` images, else retrieval), ``exhaustive``, ``retrieval``,
    #: ``sequential:overlap=N``, an hloc pairs file; or a tuple of these, matched as their union.
    pairs: str | tuple[str, ...] = "auto"
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
            "pairs": (),  # the resolved sources and what they depend on: see _pairs_inputs
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
    """Image files under ``images_dir`` (recursive, sorted, symbolic links followed), relative
    to it, '/'-separated: the toolkit's one folder walk (:mod:`retrievalkit.images`)."""
    from .images import IMAGE_EXTENSIONS, list_image_files

    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise RkitError(f"{images_dir} is not a folder: give the folder of photos to reconstruct.")
    names = list_image_files(images_dir)
    if not names:
        raise RkitError(f"no images in {images_dir} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}, "
                        f"recursively): point `rkit sfm` at the folder holding the photos.")
    return names


def check_images(images_dir: Path, names: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Split ``names`` into images that decode (:func:`retrievalkit.images.load_rgb`) and
    (name, reason) for those that do not."""
    from .images import ImageLoadError, load_rgb

    good: list[str] = []
    bad: list[tuple[str, str]] = []
    for name in names:
        try:
            load_rgb(images_dir / name)
            good.append(name)
        except ImageLoadError as exc:
            bad.append((name, str(exc)))
    return good, bad


# -- retrieval descriptors for the pairs ----------------------------------------------------------
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
@dataclasses.dataclass
class SfmRun:
    """What the stages of one :func:`run_sfm` call share: inputs, and what earlier stages left."""

    images_dir: Path
    out_dir: Path
    options: SfmOptions
    names: list[str]
    unreadable: list[tuple[str, str]]
    pair_sources: list[str]
    log: Callable[[str], None]
    progress: bool = True
    done: StagesDone = dataclasses.field(default_factory=StagesDone)
    reconstructions: list[Any] = dataclasses.field(default_factory=list)
    database: TrainingDatabase | None = None
    _components: list[list[str]] | None = None

    @property
    def colmap_db(self) -> Path:
        return self.out_dir / "colmap.db"

    @property
    def pairs_file(self) -> Path:
        return self.out_dir / "pairs.txt"

    @property
    def models_dir(self) -> Path:
        return self.out_dir / "models"

    @property
    def pairs_mode(self) -> str:
        return "+".join(self.pair_sources)

    def components(self) -> list[list[str]]:
        """The match graph's groups (:func:`match_graph_components`), read once per run."""
        if self._components is None:
            self._components = match_graph_components(self.colmap_db, self.names, self.options.min_num_matches)
        return self._components

    def bar(self, total: int, desc: str, unit: str) -> Any:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, disable=not self.progress)


def extract_features(run: SfmRun) -> dict[str, Any]:
    """Stage ``features``: SIFT on every readable image into ``colmap.db`` (in chunks, so an
    interruption loses one chunk; a change of options starts the database afresh)."""
    import pycolmap

    options = run.options
    if "features" in run.done.changed and run.colmap_db.exists():
        run.colmap_db.unlink()  # features of other options: start afresh
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = options.image_size
    extraction.num_threads = options.num_threads
    extraction.sift.max_num_features = options.max_features
    run.log(f"[features] SIFT on {len(run.names)} images (longest side <= {options.image_size} px)")
    with run.bar(len(run.names), "features", "img") as bar:
        for chunk in _chunks(run.names, 16):
            pycolmap.extract_features(run.colmap_db, run.images_dir, image_names=list(chunk),
                                      camera_mode=_camera_mode(options.camera_mode),
                                      extraction_options=extraction, device=pycolmap.Device.cpu)
            bar.update(len(chunk))
    with pycolmap.Database.open(run.colmap_db) as db:
        with_features = {img.name for img in db.read_all_images() if db.num_keypoints_for_image(img.image_id) > 0}
    return {"images_without_features": [n for n in run.names if n not in with_features]}


def _pairs_inputs(run: SfmRun) -> dict[str, Any]:
    inputs: dict[str, Any] = {"mode": run.pairs_mode, "images": len(run.names)}
    if "retrieval" in run.pair_sources:
        options = run.options
        inputs.update(k=options.k, descriptor_model=options.descriptor_model,
                      descriptor_image_size=options.descriptor_image_size)
    return {**inputs, **source_inputs(run.pair_sources)}


def choose_pairs(run: SfmRun) -> dict[str, Any]:
    """Stage ``pairs``: the union of the pair sources -> ``pairs.txt``; matches of pairs no
    longer chosen (an earlier run's) are dropped from ``colmap.db``."""
    from .hloc import write_pairs

    options = run.options

    def descriptors() -> np.ndarray:
        run.log(f"[pairs] retrieval: top-{options.k} neighbours by {options.descriptor_model} "
                f"at {options.descriptor_image_size} px")
        return retrieval_descriptors(run.images_dir, run.names, options, run.progress)

    pairs = select_pairs(run.names, run.pair_sources, run.log, descriptors, options.k)
    n = len(run.names)
    run.log(f"[pairs] {len(pairs)} pairs to match (exhaustive would be {n * (n - 1) // 2})")
    write_pairs(run.pairs_file, pairs)
    if "features" in run.done.reused:
        dropped = _drop_other_matches(run.colmap_db, pairs)
        if dropped:
            run.log(f"[pairs] dropped the matches of {dropped} pairs of an earlier run not in the new list")
    return {"num_pairs": len(pairs)}


def match_pairs(run: SfmRun) -> dict[str, Any]:
    """Stage ``matches``: SIFT matching and geometric verification of ``pairs.txt``, in chunks
    of :func:`match_chunk_size` pairs (the progress bar moves, an interruption loses one chunk)."""
    import pycolmap

    from .hloc import read_pairs, write_pairs

    options = run.options
    pairs = read_pairs(run.pairs_file)
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = options.num_threads
    verification = pycolmap.TwoViewGeometryOptions()
    verification.min_num_inliers = options.min_num_matches
    pairing = pycolmap.ImportedPairingOptions()
    pairing.match_list_path = run.out_dir / "pairs.chunk.txt"
    run.log(f"[matches] matching and verifying {len(pairs)} pairs")
    with run.bar(len(pairs), "matches", "pair") as bar:
        for chunk in _chunks(pairs, match_chunk_size(len(pairs))):
            write_pairs(pairing.match_list_path, chunk)
            pycolmap.match_image_pairs(run.colmap_db, matching_options=matching, pairing_options=pairing,
                                       verification_options=verification, device=pycolmap.Device.cpu)
            bar.update(len(chunk))
    Path(pairing.match_list_path).unlink(missing_ok=True)
    with pycolmap.Database.open(run.colmap_db) as db:
        _, inliers = db.read_two_view_geometry_num_inliers()
    verified = sum(1 for n in inliers if n >= options.min_num_matches)
    run.log(f"[matches] {verified} pairs with >= {options.min_num_matches} verified matches")
    return {"verified_pairs": int(verified)}


def match_chunk_size(num_pairs: int) -> int:
    """Pairs per matching call: about 1/40 of them (so the bar moves about 40 times), at least
    32 (each call costs: matching 32 Lund pairs took 1.5x as long in chunks of 4 as in one call,
    as COLMAP's matching and verification threads drain at the end of a call), at most 200."""
    return int(min(200, max(32, -(-num_pairs // 40))))


def _mapping_options(options: SfmOptions) -> Any:
    import pycolmap

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
    return pipeline


def map_groups(run: SfmRun) -> dict[str, Any]:
    """Stage ``mapping``: incremental mapping of each group of the match graph (or of all
    images) -> ``models/<k>/``, largest first, written in full before the old ones go."""
    import pycolmap

    options = run.options
    pipeline = _mapping_options(options)
    work = run.out_dir / "models.partial"
    shutil.rmtree(work, ignore_errors=True)
    groups = run.components() if options.split_components else [list(run.names)]
    groups = [g for g in groups if len(g) >= options.min_model_size]
    run.log(f"[mapping] incremental mapping of {len(groups)} connected group(s) of images "
            f"({', '.join(str(len(g)) for g in groups)}), min model size {options.min_model_size}")
    found = []
    with run.bar(sum(len(g) for g in groups), "mapping", "img") as bar:
        for k, group in enumerate(groups):
            pipeline.image_names = group
            (work / str(k)).mkdir(parents=True)
            step = _capped(bar, len(group))
            found += list(pycolmap.incremental_mapping(
                run.colmap_db, run.images_dir, work / str(k), options=pipeline,
                initial_image_pair_callback=lambda: step(2), next_image_callback=lambda: step(1)).values())
            step(len(group))  # the group is done: images the mapper left out count as handled
    shutil.rmtree(work, ignore_errors=True)
    reconstructions = sorted(found, key=lambda r: -r.num_reg_images())
    run.reconstructions = [r for r in reconstructions if r.num_reg_images() >= options.min_model_size]
    _write_models(run.reconstructions, run.out_dir / "models.new", run.models_dir)
    sizes = [r.num_reg_images() for r in run.reconstructions]
    run.log(f"[mapping] {len(sizes)} models ({', '.join(map(str, sizes))} images)")
    return {"models": sizes}


def _capped(bar: Any, total: int) -> Callable[[int], None]:
    """``step(n)`` advances ``bar`` by ``n``, never past ``total`` steps in all."""
    left = [total]

    def step(count: int) -> None:
        take = min(count, left[0])
        left[0] -= take
        bar.update(take)

    return step


def _write_models(reconstructions: Sequence[Any], staging: Path, final: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for k, rec in enumerate(reconstructions):
        (staging / str(k)).mkdir()
        rec.write(str(staging / str(k)))
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)


def load_models(run: SfmRun) -> bool:
    """Reuse ``models/<k>/`` of an earlier run (False when the folder is missing)."""
    import pycolmap

    if not run.models_dir.is_dir():
        return False
    run.reconstructions = [pycolmap.Reconstruction(str(d)) for d in
                           sorted(run.models_dir.iterdir(), key=lambda d: int(d.name)) if d.is_dir()]
    return True


def _not_registered(run: SfmRun, database: TrainingDatabase) -> list[str]:
    registered = set(database.images)
    return [n for n in run.names if n not in registered]


def build_database(run: SfmRun) -> dict[str, Any]:
    """Stage ``database``: the training database from the models, with pair statistics."""
    _require_models(run)
    groups = run.components() if run.options.split_components else None
    database = database_from_reconstructions(run.reconstructions, root=run.images_dir, groups=groups)
    database.meta.update({
        "source": "rkit sfm",
        "images_dir": str(run.images_dir),
        "options": dataclasses.asdict(run.options),
        "pairs_mode": run.pairs_mode,
        "unregistered": _not_registered(run, database),
        "unreadable": [list(u) for u in run.unreadable],
    })
    database.use_pair_statistics(database.compute_pair_statistics(progress=run.progress))
    database.save(run.out_dir / "database")
    run.database = database
    return {}


def load_stored_database(run: SfmRun) -> bool:
    """Reuse ``database/`` of an earlier run (False when it is missing or damaged)."""
    _require_models(run)
    try:
        run.database = load_database(run.out_dir / "database")
    except RkitError as exc:  # a damaged database: build it again from the models
        run.log(f"[database] the stored database cannot be read ({exc}): building it again")
        return False
    return True


def _require_models(run: SfmRun) -> None:
    if not run.reconstructions:
        raise RkitError(
            f"no 3D model could be reconstructed from {len(run.names)} images in {run.images_dir}: they "
            f"share too few verified matches. SfM needs several overlapping photos of each place; "
            f"try --pairs exhaustive, a larger --image-size, or a smaller --min-model-size."
        )


def sfm_stages(options: SfmOptions) -> list[Stage[SfmRun]]:
    """The stages of :func:`run_sfm`, in order: name -> function (and its inputs, its reuse)."""

    def keys(stage: str, extra: Callable[[SfmRun], dict[str, Any]] = lambda run: {}) -> Callable[[SfmRun], dict[str, Any]]:
        return lambda run: {**options.stage_options(stage), **extra(run)}

    return [
        Stage("features", extract_features, keys("features", lambda run: {"images": len(run.names)})),
        Stage("pairs", choose_pairs, keys("pairs", _pairs_inputs), lambda run: run.pairs_file.is_file()),
        Stage("matches", match_pairs, keys("matches")),
        Stage("mapping", map_groups, keys("mapping"), load_models),
        Stage("database", build_database, keys("database"), load_stored_database),
    ]


def _prepare(images_dir: Path, log: Callable[[str], None]) -> tuple[list[str], list[tuple[str, str]]]:
    """The readable images of ``images_dir`` (and the unreadable ones, logged); clear errors
    for fewer than two or for names a pairs file cannot hold."""
    names, unreadable = check_images(images_dir, find_images(images_dir))
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
    return names, unreadable


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

    options = options or SfmOptions()
    log = log or (lambda message: print(message, flush=True))
    images_dir = Path(images_dir).resolve()
    out_dir = Path(out_dir)
    if stop_after is not None and stop_after not in STAGES:
        raise RkitError(f"stop_after {stop_after!r}: use one of {', '.join(STAGES)}")
    names, unreadable = _prepare(images_dir, log)
    sources = resolve_sources(options.pairs, len(names), options.exhaustive_below)
    out_dir.mkdir(parents=True, exist_ok=True)
    pycolmap.logging.minloglevel = 0 if verbose else 2
    run = SfmRun(images_dir, out_dir, options, names, unreadable, sources, log, progress)
    run_stages(sfm_stages(options), run, out_dir / "stages", log, stop_after, run.done)
    if run.database is None:
        return _partial_result(run)
    return _finish(run)


def _finish(run: SfmRun) -> SfmResult:
    """Write ``report.json``, log the summary, and the result."""
    database = run.database
    assert database is not None
    unregistered = _not_registered(run, database)
    seconds = {stage: run.done.seconds.get(stage, 0.0) for stage in STAGES}
    report = {
        "images_dir": str(run.images_dir),
        "images": len(run.names) + len(run.unreadable),
        "registered": len(database.images),
        "unregistered": unregistered,
        "unreadable": [list(u) for u in run.unreadable],
        "models": [int(n) for n in np.bincount(database.clusters)],
        "pairs_mode": run.pairs_mode,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "reused_stages": run.done.reused,
        "options": dataclasses.asdict(run.options),
    }
    write_text_atomic(run.out_dir / "report.json", json.dumps(report, indent=1) + "\n")
    if unregistered:
        run.log(f"{len(unregistered)} image(s) not registered in any model: "
                + ", ".join(unregistered[:20]) + (" ..." if len(unregistered) > 20 else ""))
    run.log(f"training database: {len(database.images)} images in {database.num_clusters} models -> "
            f"{run.out_dir / 'database'}")
    return SfmResult(out_dir=run.out_dir, database=database, registered=sorted(database.images),
                     unregistered=unregistered, unreadable=run.unreadable, timings=seconds,
                     skipped_stages=list(run.done.reused), num_models=database.num_clusters)


def _partial_result(run: SfmRun) -> SfmResult:
    empty = TrainingDatabase(images=[], clusters=np.zeros(0, np.int64))
    return SfmResult(out_dir=run.out_dir, database=empty, registered=[], unregistered=[],
                     unreadable=run.unreadable, timings=dict(run.done.seconds),
                     skipped_stages=list(run.done.reused), num_models=0)


__all__ = ["SfmOptions", "SfmResult", "SfmRun", "run_sfm", "find_images", "check_images",
           "exhaustive_pairs", "neighbour_pairs", "database_from_reconstructions", "load_database",
           "import_dbpkl", "sfm_stages", "STAGES"]
