"""Check that pycolmap reconstructs the synthetic dataset, and how fast.

Generates a set (``retrievalkit.synth.generate_synthetic``), runs COLMAP SIFT extraction,
exhaustive matching and incremental mapping on all scenes together (as `rkit sfm` would), and
reports, per scene, how many views were registered in its largest model, whether any model mixes
scenes, the camera-centre RMS error after a similarity alignment to the true cameras (relative
to the true cameras' mean distance from their centroid), how well the true overlaps and
scale changes (``synthetic_ground_truth``) rank like the recovered ones, and the timings.

    nice -n 10 python bench/synth_sfm.py --preset tiny --work /tmp/synth-sfm-tiny
    nice -n 10 python bench/synth_sfm.py --preset default --work /tmp/synth-sfm-default
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pycolmap

from scipy.stats import spearmanr

from retrievalkit.synth import generate_synthetic, load_ground_truth, synthetic_ground_truth
from retrievalkit.trainingdb import TrainingDatabase


def similarity_residual(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Residuals |s R x + t - y| of the least-squares similarity (Umeyama 1991) mapping source to target."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    xs, xt = source - mu_s, target - mu_t
    u, sing, vt = np.linalg.svd(xt.T @ xs / len(source))
    fix = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        fix[2, 2] = -1
    rotation = u @ fix @ vt
    scale = np.trace(np.diag(sing) @ fix) / xs.var(0).sum()
    return np.linalg.norm(scale * xs @ rotation.T - xt, axis=1)


def model_database(model: "pycolmap.Reconstruction", names: list[str]) -> TrainingDatabase:
    """What the reconstruction says about ``names``: observed point ids, their depths, focals."""
    by_name = {img.name: img for img in model.images.values()}
    ids, depths, focals = [], [], []
    for name in names:
        image = by_name[name]
        observed = sorted({p.point3D_id for p in image.points2D if p.has_point3D()})
        xyz = np.array([model.points3D[i].xyz for i in observed]).reshape(-1, 3)
        pose = image.cam_from_world().matrix()
        ids.append(np.array(observed, dtype=np.int64))
        depths.append(xyz @ pose[2, :3] + pose[2, 3])
        focals.append(model.cameras[image.camera_id].mean_focal_length())
    return TrainingDatabase(images=names, clusters=np.zeros(len(names)), point_ids=ids,
                            point_depths=depths, focals=np.array(focals))


def compare_covisibility(truth: TrainingDatabase, recovered: TrainingDatabase, names: list[str]) -> dict:
    """Rank agreement of overlap and scale change over all ordered pairs of ``names``."""
    index = {name: i for i, name in enumerate(truth.images)}
    gt_overlap, sfm_overlap, gt_scale, sfm_scale, m2_same = [], [], [], [], []
    for q in range(len(names)):
        best_gt, best_sfm = -1, -1
        for i in range(len(names)):
            if i == q:
                continue
            tq, ti = index[names[q]], index[names[i]]
            gt_overlap.append(truth.overlap(tq, ti))
            sfm_overlap.append(recovered.overlap(q, i))
            if truth.shared_points(tq, ti) and recovered.shared_points(q, i) >= 10:
                gt_scale.append(truth.scale_change(tq, ti))
                sfm_scale.append(recovered.scale_change(q, i))
        gt_shared = [truth.shared_points(index[names[q]], index[n]) if n != names[q] else -1 for n in names]
        sfm_shared = [recovered.shared_points(q, i) if i != q else -1 for i in range(len(names))]
        m2_same.append(int(np.argmax(gt_shared)) == int(np.argmax(sfm_shared)))
    gt_scale, sfm_scale = np.array(gt_scale), np.array(sfm_scale)
    return {
        "pairs": len(gt_overlap),
        "overlap_spearman": float(spearmanr(gt_overlap, sfm_overlap)[0]),
        "scale_pairs": len(gt_scale),
        "scale_spearman": float(spearmanr(gt_scale, sfm_scale)[0]) if len(gt_scale) > 2 else None,
        "scale_median_abs_log_ratio": float(np.median(np.abs(np.log(sfm_scale / gt_scale)))) if len(gt_scale) else None,
        "m2_agreement": float(np.mean(m2_same)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (replaced)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-model-size", type=int, default=3,
                        help="COLMAP keeps a model only with this many images (its default, 10, "
                             "discards every scene but the first of a set with fewer views)")
    args = parser.parse_args()

    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    timings, cpu = {}, {}
    start, cpu_start = time.perf_counter(), time.process_time()
    data_dir = generate_synthetic(args.work / "data", preset=args.preset, seed=args.seed, progress=False)
    timings["generate"] = time.perf_counter() - start
    cpu["generate"] = time.process_time() - cpu_start
    image_dir = data_dir / "images"
    database = args.work / "database.db"

    start, cpu_start = time.perf_counter(), time.process_time()
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = args.threads
    pycolmap.extract_features(database, image_dir, extraction_options=extraction,
                              device=pycolmap.Device.cpu)
    timings["extract"] = time.perf_counter() - start
    cpu["extract"] = time.process_time() - cpu_start

    start, cpu_start = time.perf_counter(), time.process_time()
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = args.threads
    pycolmap.match_exhaustive(database, matching_options=matching, device=pycolmap.Device.cpu)
    timings["match"] = time.perf_counter() - start
    cpu["match"] = time.process_time() - cpu_start

    start, cpu_start = time.perf_counter(), time.process_time()
    mapping = pycolmap.IncrementalPipelineOptions()
    mapping.num_threads = args.threads
    mapping.min_model_size = args.min_model_size
    models = pycolmap.incremental_mapping(database, image_dir, args.work / "sparse", mapping)
    timings["map"] = time.perf_counter() - start
    cpu["map"] = time.process_time() - cpu_start

    truth = load_ground_truth(data_dir)
    truth_db = synthetic_ground_truth(data_dir)
    centres = {im["path"]: np.asarray(im["centre"]) for im in truth["images"]}
    views = truth["parameters"]["views_per_scene"]
    per_scene: dict[str, list] = collections.defaultdict(list)
    report = {"preset": args.preset, "seed": args.seed, "models": []}
    for key, model in models.items():
        names = [img.name for img in model.images.values()]
        scenes = collections.Counter(name.split("/")[0] for name in names)
        entry = {"model": key, "images": len(names), "points3D": model.num_points3D(),
                 "scenes": dict(scenes)}
        if len(scenes) == 1 and len(names) >= 3:
            recovered = np.array([img.projection_center() for img in model.images.values()])
            true = np.array([centres[n] for n in names])
            scale = np.linalg.norm(true - true.mean(0), axis=1).mean()
            entry["centre_rmse_rel"] = float(np.sqrt((similarity_residual(recovered, true) ** 2).mean()) / scale)
            entry["mean_reprojection_error"] = float(model.compute_mean_reprojection_error())
            entry["covisibility_vs_truth"] = compare_covisibility(
                truth_db, model_database(model, names), names)
        report["models"].append(entry)
        for scene, count in scenes.items():
            per_scene[scene].append(count)
    report["registered_per_scene"] = {s["name"]: max(per_scene.get(s["name"], [0])) for s in truth["scenes"]}
    report["views_per_scene"] = views
    report["mixed_models"] = sum(len(m["scenes"]) > 1 for m in report["models"])
    report["wall_s"] = {k: round(v, 2) for k, v in timings.items()}
    report["cpu_s"] = {k: round(v, 2) for k, v in cpu.items()}  # all threads of this process
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
