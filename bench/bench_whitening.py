"""Whitening benchmark on the landmark photos, leave-landmarks-out (docs/bench-sections/03-whitening.md).

For MAC and SPoC descriptors of an ImageNet EfficientNet-Lite0 (1280-D, longest side 448 px):
the landmarks are split into two halves (random partitions of the 9 landmark folders, each half
holding at least ``--min-train`` photos); a whitening is learned on one half and evaluated on
the other (queries and database both from the held-out half, every image a query, SPEC
section 5), then the halves swap. mAP is averaged over all folds; every method sees the same
folds, so differences between rows are paired comparisons.

PCA and Lw order their directions by decreasing eigenvalue, so each is fitted once per fold
with every meaningful direction and truncated to each output dimension (this equals a fit at
that dimension, see tests/test_whitening.py). A dimension above what the training half can give
(its rank, at most N_train - 1) is reported as not available, never padded.

    nice -n 10 python bench/bench_whitening.py --cache /tmp/rkit-bench-whitening \\
        --table docs/bench-sections/03-whitening-table.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from retrievalkit.descriptors import DescriptorSet
from retrievalkit.errors import RkitError
from retrievalkit.evaluate import evaluate_folder_collection, folder_labels
from retrievalkit.extract import extract_descriptors, list_images
from retrievalkit.model import ModelConfig, build_model
from retrievalkit.whitening import FittedWhitening, WhiteningData, fit_whitening

REPO = Path(__file__).resolve().parents[1]
LANDMARKS = REPO.parent / "shared" / "data" / "landmarks"
POOLINGS = ("mac", "spoc")
#: (row label, whitening spec) evaluated at every dimension
METHODS = (
    ("pca:whiten=false (plain PCA)", "pca:whiten=false"),
    ("pca (PCA-whitening)", "pca"),
    ("learned (Lw, rotation by C_D)", "learned"),
    ("learned:rotation=all", "learned:rotation=all"),
)
RIDGES = (0.001, 0.1, 1.0, 10.0)  # sensitivity of Lw to its ridge (default 0.01 is the main row)


def descriptors_for(pooling: str, data: Path, cache: Path, image_size: int) -> DescriptorSet:
    """Extract (or read back) the descriptors of every photo with one pooling."""
    path = cache / f"landmarks-efficientnet-lite0-{pooling}-{image_size}.npz"
    if path.is_file():
        return DescriptorSet.load(path)
    root, paths = list_images(data)
    model = build_model(ModelConfig("efficientnet-lite0", pooling, "imagenet"))
    start = time.perf_counter()
    result = extract_descriptors(model, paths, root=root, image_size=image_size, batch_size=8,
                                 device="cpu", num_workers=0, progress=True)
    seconds = time.perf_counter() - start
    if result.failed:
        print(f"warning: {len(result.failed)} images failed: {result.failed}", file=sys.stderr)
    dset = DescriptorSet(result.descriptors, result.paths,
                         {"backbone": "efficientnet-lite0", "pooling": pooling, "image_size": image_size,
                          "extract_seconds": round(seconds, 1)})
    print(f"{pooling}: extracted {len(dset)} descriptors ({dset.dim}-D) in {seconds:.0f} s", file=sys.stderr)
    dset.save(path)
    return dset


def landmark_folds(labels: list[str], repeats: int, min_train: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """``2 * repeats`` (train landmarks, test landmarks) folds from random halvings.

    Each halving puts every landmark on one side, with at least ``min_train`` photos on each
    side (so both sides can be training sets); both directions of a halving are folds.
    Halvings are drawn with ``seed`` and not repeated.
    """
    names, counts = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(seed)
    seen: set[frozenset[str]] = set()
    folds: list[tuple[list[str], list[str]]] = []
    for _ in range(100_000):
        if len(folds) == 2 * repeats:
            return folds
        side = rng.random(len(names)) < 0.5
        left = frozenset(names[side])
        if left in seen or frozenset(names[~side]) in seen:
            continue
        if counts[side].sum() < min_train or counts[~side].sum() < min_train:
            continue
        seen.add(left)
        a, b = sorted(names[side]), sorted(names[~side])
        folds += [(a, b), (b, a)]
    raise RkitError(f"could not draw {repeats} distinct halvings with >= {min_train} photos per side: "
                    f"lower --min-train or --repeats")


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    dims = [int(d) for d in args.dims.split(",")]
    results: dict = {"dims": dims, "poolings": {}, "folds": None}
    for pooling in POOLINGS:
        dset = descriptors_for(pooling, Path(args.data), cache, args.image_size)
        x = dset.descriptors
        labels = folder_labels(dset.paths)
        folds = landmark_folds(labels, args.repeats, args.min_train, args.seed)
        results["folds"] = [{"train": tr, "test": te} for tr, te in folds]
        label_array = np.asarray(labels)
        rows: dict[str, dict] = {}
        ranks: dict[str, list[int]] = {}
        start = time.perf_counter()
        for fold, (train_names, test_names) in enumerate(folds):
            train = np.isin(label_array, train_names)
            test = np.isin(label_array, test_names)
            test_labels = label_array[test].tolist()
            rows.setdefault("none (raw 1280-D)", {}).setdefault("full", []).append(
                evaluate_folder_collection(x[test], test_labels).map)
            data = WhiteningData.from_labels(x[train], label_array[train].tolist())
            specs = list(METHODS) + ([(f"learned:ridge={r:g}", f"learned:ridge={r:g}") for r in RIDGES]
                                     if pooling == "mac" else [])
            for name, spec in specs:
                fitted: FittedWhitening = fit_whitening(spec, data)
                ranks.setdefault(name, []).append(fitted.out_dim)
                for dim in dims + ["full"]:
                    cell = rows.setdefault(name, {}).setdefault(str(dim), [])
                    if dim != "full" and dim > fitted.out_dim:
                        cell.append(None)
                        continue
                    w = fitted if dim == "full" else fitted.truncated(dim)
                    cell.append(evaluate_folder_collection(w.apply(x[test]), test_labels).map)
            print(f"{pooling} fold {fold + 1}/{len(folds)}: train {train.sum()} photos "
                  f"({', '.join(train_names)}), test {test.sum()} photos; "
                  f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
        results["poolings"][pooling] = {"maps": rows, "ranks": ranks,
                                        "n_train": [int(np.isin(label_array, tr).sum()) for tr, _ in folds]}
    return results


def _cell(values: list) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "n/a"
    text = f"{np.mean(got):.3f} ± {np.std(got):.3f}"
    return text if len(got) == len(values) else f"{text} ({len(got)}/{len(values)} folds)"


def markdown(results: dict) -> str:
    dims = results["dims"]
    lines = []
    for pooling, res in results["poolings"].items():
        ranks = res["ranks"]
        lines.append(f"**{pooling.upper()}** (mean ± std of mAP over {len(res['n_train'])} folds; "
                     f"training photos per fold {min(res['n_train'])}–{max(res['n_train'])})\n")
        lines.append("| whitening | " + " | ".join(f"{d} D" for d in dims) + " | all meaningful (D = rank) |")
        lines.append("|---|" + "---|" * (len(dims) + 1))
        for name, cells in res["maps"].items():
            if name.startswith("none"):
                row = ["–"] * len(dims) + [f"{_cell(cells['full'])} (1280 D)"]
            else:
                r = ranks[name]
                row = [_cell(cells[str(d)]) if any(v is not None for v in cells[str(d)])
                       else f"n/a (rank ≤ {max(r)})" for d in dims]
                row.append(f"{_cell(cells['full'])} ({min(r)}–{max(r)} D)")
            lines.append(f"| {name} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(LANDMARKS), help="folder of landmark folders")
    parser.add_argument("--cache", default="/tmp/rkit-bench-whitening", help="where descriptors are cached")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--dims", default="16,32,128,512")
    parser.add_argument("--repeats", type=int, default=8, help="random halvings (2 folds each)")
    parser.add_argument("--min-train", type=int, default=40, help="photos on each side of a halving")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="write all numbers here")
    parser.add_argument("--table", default=None, help="write the markdown tables here")
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        sys.exit(f"landmark photos not found at {args.data}: pass --data")
    results = run(args)
    table = markdown(results)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.table:
        Path(args.table).write_text(table + "\n")


if __name__ == "__main__":
    main()
