"""``rkit sfm``: Structure-from-Motion on a photo folder -> training database (thin layer).

``rkit sfm IMAGES --out DIR`` runs :func:`retrievalkit.sfm.run_sfm`; ``rkit sfm --stats DIR``
summarises a database (:meth:`TrainingDatabase.summary`); ``rkit sfm --import-dbpkl db.pkl
--root IMS --out DIR`` converts a retrieval-SfM ``db.pkl`` (:mod:`retrievalkit.dbpkl`).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..config import write_resolved_config
from ..errors import RkitError
from ..outputs import check_output_path
from ..sfm import SfmOptions

_DEFAULTS = SfmOptions()


@click.command("sfm")
@click.argument("images", required=False, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path),
              help="Output folder (COLMAP database, models, training database). Re-run to resume.")
@click.option("--stats", "stats_dir", type=click.Path(path_type=Path),
              help="Summarise the training database in this folder and exit.")
@click.option("--import-dbpkl", "dbpkl", type=click.Path(path_type=Path),
              help="Convert a retrieval-SfM db.pkl into a training database in --out.")
@click.option("--root", type=click.Path(path_type=Path),
              help="With --import-dbpkl: the folder holding ims/ (image paths are relative to it).")
@click.option("--split", default="train", show_default=True, help="With --import-dbpkl: train or val.")
@click.option("--image-size", default=_DEFAULTS.image_size, show_default=True, help="SIFT image size (longest side, px).")
@click.option("--max-features", default=_DEFAULTS.max_features, show_default=True, help="SIFT features per image.")
@click.option("--pairs", "pairs", multiple=True, default=(_DEFAULTS.pairs,), show_default=True,
              metavar="SOURCE",
              help="Which pairs to match: auto (exhaustive for small folders, else retrieval), exhaustive, "
                   "retrieval, sequential:overlap=N (ordered sequences), or an hloc pairs file. "
                   "Repeat to match the union, e.g. --pairs retrieval --pairs sequential:overlap=5.")
@click.option("-k", "--k", "k", default=_DEFAULTS.k, show_default=True, help="Neighbours per image for retrieval pairs.")
@click.option("--exhaustive-below", default=_DEFAULTS.exhaustive_below, show_default=True,
              help="With --pairs auto: match exhaustively up to this many images.")
@click.option("--descriptor-model", default=_DEFAULTS.descriptor_model, show_default=True,
              help="For retrieval pairs: BACKBONE,POOLING (ImageNet weights) or a saved model folder.")
@click.option("--descriptor-image-size", default=_DEFAULTS.descriptor_image_size, show_default=True, help="Image size for those descriptors.")
@click.option("--min-model-size", default=_DEFAULTS.min_model_size, show_default=True,
              help="Smallest 3D model kept (registered images; COLMAP's default is 10).")
@click.option("--init-min-tri-angle", default=_DEFAULTS.init_min_tri_angle, show_default=True,
              help="Mapper: min triangulation angle of the initial pair (deg); lower helps forward motion.")
@click.option("--init-max-forward-motion", default=_DEFAULTS.init_max_forward_motion, show_default=True,
              help="Mapper: max forward-motion share of the initial pair; 0.999 for street sequences.")
@click.option("--abs-pose-min-inliers", default=_DEFAULTS.abs_pose_min_num_inliers, show_default=True,
              help="Mapper: min inliers to register an image.")
@click.option("--split-groups/--no-split-groups", default=_DEFAULTS.split_components, show_default=True,
              help="Map each group of images linked by verified pairs on its own.")
@click.option("--min-num-matches", default=_DEFAULTS.min_num_matches, show_default=True, help="Min verified matches per pair.")
@click.option("--camera-mode", type=click.Choice(["auto", "single", "per_image", "per_folder"]),
              default=_DEFAULTS.camera_mode, show_default=True, help="How images share camera intrinsics.")
@click.option("--threads", default=_DEFAULTS.num_threads, show_default=True, help="CPU threads for COLMAP (-1: all).")
@click.option("--seed", default=_DEFAULTS.seed, show_default=True, help="Mapper random seed.")
@click.option("--device", default=_DEFAULTS.device, show_default=True, help="torch device for retrieval descriptors.")
@click.option("--verbose", is_flag=True, help="Show COLMAP's own log.")
@click.option("--json", "as_json", is_flag=True, help="With --stats: machine-readable output.")
def command(images: Path | None, out_dir: Path | None, stats_dir: Path | None, dbpkl: Path | None,
            root: Path | None, split: str, image_size: int, max_features: int, pairs: tuple[str, ...], k: int,
            exhaustive_below: int, descriptor_model: str, descriptor_image_size: int,
            min_model_size: int, init_min_tri_angle: float, init_max_forward_motion: float,
            abs_pose_min_inliers: int, split_groups: bool,
            min_num_matches: int, camera_mode: str, threads: int, seed: int, device: str,
            verbose: bool, as_json: bool) -> None:
    """Structure-from-Motion on the photos in IMAGES -> training database in --out.

    Every reconstructed 3D model becomes a cluster; registered images get their camera and the
    3D points they observe (for the m2/m3 positive miners). Stages: features, pairs, matches,
    mapping, database; re-running the same command reuses the finished ones.

    \b
    rkit sfm photos/ --out runs/sfm
    rkit sfm street/ --out runs/street --pairs retrieval --pairs sequential:overlap=5
    rkit sfm photos/ --out runs/sfm --pairs pairs-netvlad.txt    (hloc pairs file)
    """
    from ..trainingdb import load_database

    if stats_dir is not None:
        summary = load_database(stats_dir).summary()
        if as_json:
            click.echo(json.dumps(summary, indent=1))
            return
        for key, value in summary.items():
            if key == "model_sizes":
                value = ", ".join(f"{c}:{n}" for c, n in value.items())
            click.echo(f"{key:<26} {value}")
        return
    if out_dir is None:
        raise RkitError("--out DIR is required: the folder to write the training database to.")
    check_output_path(out_dir, [images, dbpkl, root / "ims" if root is not None else None], folder=True)
    if dbpkl is not None:
        from ..dbpkl import import_dbpkl

        database = import_dbpkl(dbpkl, root, split=split)
        database.save(out_dir / "database")
        click.echo(f"imported {len(database)} images in {database.num_clusters} clusters "
                   f"({len(database.positive_pairs) if database.positive_pairs is not None else 0} "
                   f"query/positive pairs) -> {out_dir / 'database'}")
        return
    if images is None:
        raise RkitError("give the photo folder: rkit sfm IMAGES --out DIR (or --stats DIR).")
    from ..sfm import run_sfm

    options = SfmOptions(
        image_size=image_size, max_features=max_features, pairs=pairs[0] if len(pairs) == 1 else pairs, k=k,
        exhaustive_below=exhaustive_below, descriptor_model=descriptor_model,
        descriptor_image_size=descriptor_image_size, min_model_size=min_model_size,
        init_min_tri_angle=init_min_tri_angle, init_max_forward_motion=init_max_forward_motion,
        abs_pose_min_num_inliers=abs_pose_min_inliers, split_components=split_groups,
        min_num_matches=min_num_matches, camera_mode=camera_mode, num_threads=threads, seed=seed,
        device=device,
    )
    result = run_sfm(images, out_dir, options, log=lambda m: click.echo(m, err=True),
                     verbose=verbose)
    write_resolved_config(out_dir)
    timing = ", ".join(f"{stage} {sec:.1f} s" for stage, sec in result.timings.items())
    click.echo(f"registered {len(result.registered)} of {len(result.registered) + len(result.unregistered)} "
               f"images in {result.num_models} models; {timing}")
    if result.unregistered:
        click.echo(f"not registered ({len(result.unregistered)}): " + " ".join(result.unregistered))
    if result.unreadable:
        click.echo(f"unreadable ({len(result.unreadable)}): " + " ".join(n for n, _ in result.unreadable))
