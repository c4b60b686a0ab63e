"""m3: a random co-observing image with enough overlap and limited zoom (Radenović et al. 2016, sec. 3.2).

m3(q) = a random i in M(q) with |P(q) n P(i)| / |P(q)| >= t_i and scale(q, i) <= t_s
(docs/definitions.md §4; ``TrainingDatabase.overlap`` and ``scale_change``), defaults t_i = 0.2, t_s = 1.5:
hard positives that still truly match. Drawn with the trainer's generator, so a seed repeats the
choice. A query with no such image gets ``-1`` (dropped for the epoch).
"""

from __future__ import annotations

import numpy as np

from retrievalkit import Component, hookimpl
from retrievalkit.errors import RkitError
from retrievalkit.mining import one_per_query
from retrievalkit.trainingdb import TrainingDatabase


class OverlapScalePositive:
    """Positive miner m3."""

    role = "positive"
    needs_descriptors = False
    needs_points = True

    def __init__(self, t_i: float = 0.2, t_s: float = 1.5) -> None:
        if not 0.0 <= t_i <= 1.0:
            raise RkitError(f"m3 option t_i (minimum overlap) must be in [0, 1], got {t_i}: write m3:t_i=0.2")
        if t_s < 1.0:
            raise RkitError(f"m3 option t_s (maximum scale change) must be >= 1, got {t_s}: write m3:t_s=1.5")
        self.t_i = t_i
        self.t_s = t_s

    def admissible(self, q: int, db: TrainingDatabase) -> np.ndarray:
        """The images of M(q) meeting both thresholds."""
        return np.asarray([i for i in db.co_observing(q)
                           if db.overlap(q, int(i)) >= self.t_i and db.scale_change(q, int(i)) <= self.t_s],
                          dtype=np.int64)

    def mine(self, queries: np.ndarray, db: TrainingDatabase, descriptors: np.ndarray | None,
             rng: np.random.Generator) -> np.ndarray:
        db.require_points("the m3 miner")
        return one_per_query(queries, [self.admissible(int(q), db) for q in queries],
                             lambda q, candidates: int(rng.integers(len(candidates))))


@hookimpl
def rkit_miners() -> list[Component]:
    return [Component("m3", OverlapScalePositive,
                      "positive: random co-observing image, overlap>=t_i, zoom<=t_s",
                      "Radenović et al. ECCV 2016, sec. 3.2, m3(q)")]
