"""Cross-check ``rkit eval`` on a folder collection against an independent, loop-based AP.

Reads a descriptors file, ranks every image against all the others with a plain loop over
queries (numpy ``argsort`` per query) and computes, per query, both the trapezoid AP of
SPEC section 5 and the non-interpolated AP (mean precision at each positive), which is what
``../shared/data/landmarks/SOURCES.md`` quotes. Prints both mAPs next to
``evaluate_folder_collection``'s, which must equal the trapezoid one.

    python bench/bench_ap_crosscheck.py lm448-gem.npz
"""

from __future__ import annotations

import sys

import numpy as np

from retrievalkit.descriptors import DescriptorSet
from retrievalkit.evaluate import evaluate_folder_collection, folder_labels


def main(path: str) -> None:
    dset = DescriptorSet.load(path)
    labels = np.asarray(folder_labels(dset.paths))
    x = dset.descriptors.astype(np.float64)
    trapezoid, plain = [], []
    for q in range(len(labels)):
        others = np.array([i for i in range(len(labels)) if i != q])
        order = others[np.argsort(-(x[others] @ x[q]), kind="stable")]
        hits = labels[order] == labels[q]
        n_pos = int(hits.sum())
        if n_pos == 0:
            continue
        ranks = np.flatnonzero(hits)                   # 0-based ranks of the positives
        k = np.arange(1, n_pos + 1)
        at = k / (ranks + 1)
        before = np.where(ranks == 0, 1.0, (k - 1) / np.maximum(ranks, 1))
        trapezoid.append(np.mean((before + at) / 2))
        plain.append(np.mean(at))
    result = evaluate_folder_collection(dset.descriptors, labels.tolist())
    print(f"{path}: {len(labels)} images")
    print(f"  evaluate_folder_collection mAP      {result.map:.4f}")
    print(f"  loop, trapezoid (SPEC 5) mAP        {np.mean(trapezoid):.4f}")
    print(f"  loop, non-interpolated mAP          {np.mean(plain):.4f}")


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        main(argument)
