"""random-positive: a uniformly random image of M(q), the ablation baseline for m1/m2/m3.

M(q) as in docs/definitions.md §4 (``TrainingDatabase.co_observing``). A query with an empty M(q) gets ``-1``.
"""

from __future__ import annotations

import numpy as np

from retrievalkit import Component, hookimpl
from retrievalkit.mining import candidate_lists, one_per_query
from retrievalkit.trainingdb import TrainingDatabase


class RandomPositive:
    """Positive miner random-positive."""

    role = "positive"
    needs_descriptors = False
    needs_points = False

    def mine(self, queries: np.ndarray, db: TrainingDatabase, descriptors: np.ndarray | None,
             rng: np.random.Generator) -> np.ndarray:
        return one_per_query(queries, candidate_lists(db, queries),
                             lambda q, candidates: int(rng.integers(len(candidates))))


@hookimpl
def rkit_miners() -> list[Component]:
    return [Component("random-positive", RandomPositive, "positive: random co-observing image (baseline)",
                      "baseline for Radenović et al. ECCV 2016, sec. 3.2")]
