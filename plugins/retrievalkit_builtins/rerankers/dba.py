"""DBA: database-side augmentation (Arandjelović & Zisserman CVPR 2012; alpha-weighted as in
Radenović, Tolias, Chum, TPAMI 2018, sec. 5.2).

x_j' = normalise(x_j + sum_{i=1..k} max(x_j^T x_i, 0)^alpha x_i) over the k nearest *other*
database vectors x_i of x_j (x_j itself has weight 1 = 1^alpha). Every database vector is
replaced once, before any query is searched; retrievalkit caches the result per database.
"""

from __future__ import annotations

import numpy as np

from retrievalkit import Component, hookimpl
from retrievalkit.errors import ComponentOptionError
from retrievalkit.rerank import Neighbours, weighted_expansion


class DatabaseAugmentation:
    """Database side: each vector becomes the alpha-weighted mean of itself and its top ``k``."""

    def __init__(self, k: int = 2, alpha: float = 3.0) -> None:
        if k < 1:
            raise ComponentOptionError(f"dba needs k >= 1 neighbours, got k={k}: e.g. dba:k=2")
        if alpha < 0:
            raise ComponentOptionError(f"dba needs alpha >= 0, got alpha={alpha}: e.g. dba:alpha=3")
        self.k, self.alpha = k, alpha

    def augment_database(self, database: np.ndarray, neighbours: Neighbours) -> np.ndarray:
        scores, ids = neighbours(database, self.k, np.arange(len(database)))
        return weighted_expansion(database, neighbours.rows(ids), scores, ids, self.alpha)


@hookimpl
def rkit_rerankers() -> list[Component]:
    return [Component("dba", DatabaseAugmentation, "database-side augmentation (alpha-weighted DBA)",
                      "Arandjelović & Zisserman CVPR 2012; Radenović et al. TPAMI 2018, sec. 5.2")]
