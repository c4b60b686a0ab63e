"""m1: the closest co-observing image by descriptor (Radenović et al. 2016, sec. 3.2; docs/definitions.md §4).

m1(q) = argmin over i in M(q) of ||f(q) - f(i)||, with f the current network's descriptors:
the easy positive that earlier work (and the paper's baseline) used. M(q) is
:meth:`TrainingDatabase.co_observing` (all other images of q's model for a database without
3D points). A query with an empty M(q) gets ``-1``.
"""

from __future__ import annotations

import numpy as np

from retrievalkit import Component, hookimpl
from retrievalkit.mining import candidate_lists, one_per_query, require_descriptors
from retrievalkit.trainingdb import TrainingDatabase


class ClosestDescriptorPositive:
    """Positive miner m1."""

    role = "positive"
    needs_descriptors = True
    needs_points = False

    def mine(self, queries: np.ndarray, db: TrainingDatabase, descriptors: np.ndarray | None,
             rng: np.random.Generator) -> np.ndarray:
        descriptors = require_descriptors(descriptors, db, "m1")

        def closest(q: int, candidates: np.ndarray) -> int:
            return int(np.argmin(((descriptors[candidates] - descriptors[q]) ** 2).sum(axis=1)))

        return one_per_query(queries, candidate_lists(db, queries), closest)


@hookimpl
def rkit_miners() -> list[Component]:
    return [Component("m1", ClosestDescriptorPositive, "positive: closest co-observing image by descriptor",
                      "Radenović et al. ECCV 2016, sec. 3.2, m1(q)")]
