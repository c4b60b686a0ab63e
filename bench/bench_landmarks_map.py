"""Off-the-shelf retrieval quality on the landmarks photos: mAP of MAC, SPoC and GeM.

Every image is a query against the other 123 (folder = landmark; SPEC section 5), evaluated with
:func:`retrievalkit.evaluate.evaluate_folder_collection` (revisited-protocol AP, trapezoid rule).
The non-interpolated AP (mean precision at each positive) is shown as well, because the reference
figures in ``../shared/data/landmarks/SOURCES.md`` use it.

Configurations: EfficientNet-Lite0 at 448 px with gem, mac and spoc, for (a) its ImageNet weights,
(b) random weights (``--weights none``: how much the pretraining matters) and (c) the ImageNet
weights fed with the ImageNet mean/std instead of the TF-Lite normalisation the backbone declares
(to check which input normalisation is right for these weights).

To save CPU, each backbone setting is run once, with a pooling that concatenates MAC, SPoC and
GeM: ``extract_descriptors`` L2-normalises the concatenation, and re-normalising each part gives
exactly the single-pooling descriptor (L2 normalisation is scale invariant), i.e. the numbers are
those of ``rkit extract --pooling X`` (single scale, no whitening) for each X.

    nice -n 10 python bench/bench_landmarks_map.py --out docs/bench-sections/02-landmarks-map.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from retrievalkit.evaluate import evaluate_folder_collection, folder_labels
from retrievalkit.extract import extract_descriptors, list_images
from retrievalkit.model import ModelConfig, RetrievalModel
from retrievalkit.plugins import get_host

DEFAULT_LANDMARKS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "landmarks"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def non_interpolated_map(rankings: np.ndarray, labels: list[str]) -> float:
    """Mean over queries of the mean precision at the rank of each positive (no trapezoid)."""
    codes = np.unique(np.asarray(labels), return_inverse=True)[1]
    positive = codes[rankings] == codes[:, None]
    ranks = np.arange(1, rankings.shape[1] + 1)
    aps = [np.mean(np.cumsum(row)[row] / ranks[row]) for row in positive if row.any()]
    return float(np.mean(aps))


POOLINGS = ("gem", "mac", "spoc")


class ConcatPooling(torch.nn.Module):
    """The given poolings side by side: ``(B, K, H, W) -> (B, len(poolings) * K)``."""

    def __init__(self, poolings: list[torch.nn.Module]) -> None:
        super().__init__()
        self.parts = torch.nn.ModuleList(poolings)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([pooling(features) for pooling in self.parts], dim=1)


def model_for(weights: str, normalisation: str) -> RetrievalModel:
    host = get_host()
    backbone = host.build("backbone", "efficientnet-lite0", weights=weights)
    if normalisation == "imagenet":
        backbone.mean, backbone.std = IMAGENET_MEAN, IMAGENET_STD
    pooling = ConcatPooling([host.build("pooling", name) for name in POOLINGS])
    return RetrievalModel(backbone, pooling, ModelConfig("efficientnet-lite0", "+".join(POOLINGS), weights))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_LANDMARKS)
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="Markdown file for the results.")
    args = parser.parse_args()
    if not args.images.is_dir():
        print(f"no images at {args.images}: pass --images FOLDER", file=sys.stderr)
        return 2
    root, paths = list_images(args.images)

    settings = [("imagenet", "tflite"), ("none", "tflite"), ("imagenet", "imagenet")]  # (weights, normalisation)
    rows = []
    for weights, normalisation in settings:
        model = model_for(weights, normalisation)
        start = time.perf_counter()
        result = extract_descriptors(model, paths, root=root, image_size=args.image_size, device="cpu",
                                     num_workers=args.workers, progress=False)
        seconds = time.perf_counter() - start
        labels = folder_labels(result.paths)
        for part, pooling in zip(np.split(result.descriptors, len(POOLINGS), axis=1), POOLINGS):
            part = part / np.linalg.norm(part, axis=1, keepdims=True)
            evaluation = evaluate_folder_collection(part, labels)
            rows.append((pooling, weights, normalisation, evaluation,
                         non_interpolated_map(evaluation.rankings, labels), seconds, len(result.failed)))
            print(f"{pooling:5} {weights:9} {normalisation:9} mAP {evaluation.map:.4f} "
                  f"(non-interp. {rows[-1][4]:.4f}) mP@1 {evaluation.mp_at_k[1]:.4f}  {seconds:.0f} s", flush=True)

    classes = sorted(rows[0][3].per_class_ap)
    lines = [
        "## Off-the-shelf mAP on the landmarks photos",
        "",
        f"{len(paths)} photos of 9 landmarks (`../shared/data/landmarks`), every image a query against the "
        f"other {len(paths) - 1}; EfficientNet-Lite0, longest side {args.image_size} px, single scale, no "
        "whitening. mAP: revisited-protocol AP (trapezoid rule, `retrievalkit.evaluate`); non-interp.: mean "
        "precision at each positive, the measure of the reference figures in SOURCES.md "
        "(GeM 0.883, MAC 0.867, SPoC 0.845).",
        "",
        "| pooling | weights | input normalisation | mAP | mAP non-interp. | mP@1 | mP@5 | mP@10 |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for pooling, weights, normalisation, ev, nonint, seconds, _ in rows:
        norm = "TF-Lite 127/128 (default)" if normalisation == "tflite" else "ImageNet mean/std"
        lines.append(f"| {pooling} | {weights} | {norm} | {ev.map:.3f} | {nonint:.3f} | {ev.mp_at_k[1]:.3f} | "
                     f"{ev.mp_at_k[5]:.3f} | {ev.mp_at_k[10]:.3f} |")
    lines += ["", f"Extraction time for the three poolings at once (one backbone pass per row group): "
              + ", ".join(f"{r[1]}/{r[2]} {r[5]:.0f} s" for r in rows[::len(POOLINGS)])
              + " (2 CPU cores shared with other jobs).", ""]
    lines += ["", "Mean AP per landmark (default normalisation, ImageNet weights):", "",
              "| landmark | " + " | ".join(f"{p}" for p, w, n, *_ in rows[:3]) + " |",
              "|---|" + "---:|" * 3]
    for name in classes:
        lines.append(f"| {name} | " + " | ".join(f"{r[3].per_class_ap[name]:.3f}" for r in rows[:3]) + " |")
    lines += [
        "",
        "Reproduce the whole table:",
        "",
        "```",
        f"nice -n 10 python bench/bench_landmarks_map.py --image-size {args.image_size} "
        "--out docs/bench-sections/02-landmarks-map.md",
        "```",
        "",
        "or one row at a time with the command line (default normalisation rows):",
        "",
        "```",
    ]
    for pooling, weights, normalisation, *_ in rows:
        if normalisation != "tflite":
            continue  # the ImageNet mean/std rows have no command-line switch (a bench-only experiment)
        name = f"lm-{pooling}-{weights}.npz"
        lines.append(f"rkit extract ../shared/data/landmarks --backbone efficientnet-lite0 --weights {weights} "
                     f"--pooling {pooling} --image-size {args.image_size} --out {name} && rkit eval {name}")
    lines += ["```", ""]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        from retrievalkit.atomic import write_text_atomic

        write_text_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
