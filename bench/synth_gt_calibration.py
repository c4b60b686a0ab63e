"""Choose the detectability model of ``synthetic_ground_truth`` against real COLMAP reconstructions.

Reads the work folders written by ``bench/synth_sfm.py`` (``data/`` and ``sparse/<n>/``) and, for
a grid of ``min_view_cosine`` x ``min_pixels``, reports how well the true co-visibility agrees
with the recovered one over all ordered pairs of views of each reconstructed scene: Spearman
rank correlation of the shared-point counts and of the overlaps, and how often the m2 positive
(the view sharing most points) is the same view.

    python bench/synth_gt_calibration.py /tmp/synth-sfm-tiny /tmp/synth-sfm-default
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pycolmap
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).parent))
from synth_sfm import model_database  # noqa: E402

from retrievalkit.synth import synthetic_ground_truth  # noqa: E402


def agreement(truth, recovered, names: list[str]) -> tuple[float, float, float]:
    index = [truth.images.index(n) for n in names]
    pairs = [(q, i) for q in range(len(names)) for i in range(len(names)) if q != i]
    shared_t = [truth.shared_points(index[q], index[i]) for q, i in pairs]
    shared_r = [recovered.shared_points(q, i) for q, i in pairs]
    overlap_t = [truth.overlap(index[q], index[i]) for q, i in pairs]
    overlap_r = [recovered.overlap(q, i) for q, i in pairs]
    same_m2 = []
    for q in range(len(names)):
        t = [truth.shared_points(index[q], index[i]) if i != q else -1 for i in range(len(names))]
        r = [recovered.shared_points(q, i) if i != q else -1 for i in range(len(names))]
        same_m2.append(int(np.argmax(t)) == int(np.argmax(r)))
    return (float(spearmanr(shared_t, shared_r)[0]), float(spearmanr(overlap_t, overlap_r)[0]),
            float(np.mean(same_m2)))


def main() -> None:
    works = [Path(p) for p in sys.argv[1:]]
    recon = {}
    for work in works:
        models = []
        for folder in sorted((work / "sparse").iterdir()):
            model = pycolmap.Reconstruction(folder)
            names = sorted(img.name for img in model.images.values())
            models.append((names, model_database(model, names)))
        recon[work] = models
    print(f"{'cosine':>6} {'pixels':>6} " + " ".join(f"{w.name + ' shared/overlap/m2':>34}" for w in works))
    for cosine in (0.0, 0.4, 0.5, 0.6, 0.7):
        for pixels in (0.0, 1.0):
            row = []
            for work in works:
                truth = synthetic_ground_truth(work / "data", min_view_cosine=cosine, min_pixels=pixels)
                scores = np.array([agreement(truth, db, names) for names, db in recon[work]])
                row.append("{:>10.2f} {:>10.2f} {:>12.2f}".format(*scores.mean(axis=0)))
            print(f"{cosine:>6.1f} {pixels:>6.1f} " + " ".join(row), flush=True)


if __name__ == "__main__":
    main()
