"""random-negative: uniformly random pool images of other 3D models, the baseline for N1/N2.

Drawn without replacement per query from the pool minus the query's model (docs/definitions.md §4: never from
q's model).
"""

from __future__ import annotations

import numpy as np

from retrievalkit import Component, hookimpl
from retrievalkit.mining import prepare_negatives
from retrievalkit.trainingdb import TrainingDatabase


class RandomNegatives:
    """Negative miner random-negative."""

    role = "negative"
    needs_descriptors = False
    needs_points = False

    def mine(self, queries: np.ndarray, db: TrainingDatabase, descriptors: np.ndarray | None,
             num_negatives: int, rng: np.random.Generator, pool: np.ndarray | None = None) -> np.ndarray:
        queries, pool = prepare_negatives(db, queries, pool, num_negatives)
        negatives = np.empty((len(queries), num_negatives), dtype=np.int64)
        for row, q in enumerate(queries):
            candidates = pool[db.clusters[pool] != db.clusters[q]]
            negatives[row] = rng.choice(candidates, size=num_negatives, replace=False)
        return negatives


@hookimpl
def rkit_miners() -> list[Component]:
    return [Component("random-negative", RandomNegatives, "negative: random images of other 3D models (baseline)",
                      "baseline for Radenović et al. ECCV 2016, sec. 3.2")]
