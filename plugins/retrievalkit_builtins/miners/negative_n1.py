"""N1: the nearest images of other 3D models (Radenović et al. 2016, sec. 3.2; docs/definitions.md §4).

N1(q) = the ``num_negatives`` pool images closest to f(q) by descriptor, never from q's model.
One faiss search for all queries (:func:`retrievalkit.mining.ranked_negatives`).
"""

from __future__ import annotations

import numpy as np

from retrievalkit import Component, hookimpl
from retrievalkit.mining import prepare_negatives, ranked_negatives, require_descriptors
from retrievalkit.trainingdb import TrainingDatabase


class NearestNegatives:
    """Negative miner N1."""

    role = "negative"
    needs_descriptors = True
    needs_points = False

    def mine(self, queries: np.ndarray, db: TrainingDatabase, descriptors: np.ndarray | None,
             num_negatives: int, rng: np.random.Generator, pool: np.ndarray | None = None) -> np.ndarray:
        descriptors = require_descriptors(descriptors, db, "n1")
        queries, pool = prepare_negatives(db, queries, pool, num_negatives)
        return ranked_negatives(db, descriptors, queries, pool, num_negatives)


@hookimpl
def rkit_miners() -> list[Component]:
    return [Component("n1", NearestNegatives, "negative: nearest images of other 3D models",
                      "Radenović et al. ECCV 2016, sec. 3.2, N1(q)")]
