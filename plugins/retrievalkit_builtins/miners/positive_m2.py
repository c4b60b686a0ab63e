"""m2: the image sharing the most 3D points with the query (Radenović et al. 2016, sec. 3.2; docs/definitions.md §4).

m2(q) = argmax over i in M(q) of |P(q) n P(i)|. Ties go to the lowest database index, so the
choice is deterministic. Needs the 3D points (a database from ``rkit sfm``). A query with an
empty M(q) gets ``-1``.
"""

from __future__ import annotations

import numpy as np

from retrievalkit import Component, hookimpl
from retrievalkit.mining import candidate_lists, one_per_query
from retrievalkit.trainingdb import TrainingDatabase


class MostCoObservedPositive:
    """Positive miner m2."""

    role = "positive"
    needs_descriptors = False
    needs_points = True

    def mine(self, queries: np.ndarray, db: TrainingDatabase, descriptors: np.ndarray | None,
             rng: np.random.Generator) -> np.ndarray:
        db.require_points("the m2 miner")

        def most_shared(q: int, candidates: np.ndarray) -> int:
            return int(np.argmax([db.shared_points(q, int(i)) for i in candidates]))

        return one_per_query(queries, candidate_lists(db, queries), most_shared)


@hookimpl
def rkit_miners() -> list[Component]:
    return [Component("m2", MostCoObservedPositive, "positive: co-observing image sharing the most 3D points",
                      "Radenović et al. ECCV 2016, sec. 3.2, m2(q)")]
