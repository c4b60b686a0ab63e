"""N2: the nearest images of other 3D models, at most one per model (Radenović et al. 2016, sec. 3.2).

N2(q) is N1(q) with the extra rule that no two negatives come from the same 3D model, for more
variety (docs/definitions.md §4). It searches the pool only as deep as needed to find N other
models for every query (:func:`retrievalkit.mining.negatives_from_distinct_models`: a shallow
exact search, deeper only for the queries still short), and keeps the best image of each model.

Too few models: when the pool holds fewer models (other than q's) than ``num_negatives``, the
remaining slots are filled with the next-nearest images not yet chosen (from models already
used), so every query still gets ``num_negatives`` negatives; ``strict=true`` makes this an
error instead. ``last_filled`` counts the queries that needed filling in the last call.
"""

from __future__ import annotations

import numpy as np

from retrievalkit import Component, hookimpl
from retrievalkit.mining import (
    NotEnoughNegatives,
    negatives_from_distinct_models,
    prepare_negatives,
    require_descriptors,
)
from retrievalkit.trainingdb import TrainingDatabase


class OnePerModelNegatives:
    """Negative miner N2."""

    role = "negative"
    needs_descriptors = True
    needs_points = False

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.last_filled = 0

    def mine(self, queries: np.ndarray, db: TrainingDatabase, descriptors: np.ndarray | None,
             num_negatives: int, rng: np.random.Generator, pool: np.ndarray | None = None) -> np.ndarray:
        descriptors = require_descriptors(descriptors, db, "n2")
        queries, pool = prepare_negatives(db, queries, pool, num_negatives)
        chosen, ranked = negatives_from_distinct_models(db, descriptors, queries, pool, num_negatives)
        self.last_filled = len(ranked)
        if self.last_filled and self.strict:
            models = len(np.unique(db.clusters[pool]))
            raise NotEnoughNegatives(
                f"n2 needs {num_negatives} other 3D models per query but the pool has {models} models "
                f"in all; lower --num-negatives, or drop strict=true to fill with next-nearest images")
        for row, ranking in ranked.items():  # rows short of models: their whole pool ranking
            have = chosen[row][chosen[row] >= 0]
            rest = ranking[(ranking >= 0) & ~np.isin(ranking, have)]
            chosen[row] = np.concatenate([have, rest])[:num_negatives]
        return chosen


@hookimpl
def rkit_miners() -> list[Component]:
    return [Component("n2", OnePerModelNegatives, "negative: nearest images of other 3D models, one per model",
                      "Radenović et al. ECCV 2016, sec. 3.2, N2(q)")]
