"""alpha-QE: alpha-weighted query expansion (Radenović, Tolias, Chum, TPAMI 2018, sec. 5.2).

q' = normalise(q + sum_{i=1..k} max(q^T x_i, 0)^alpha x_i) over the k nearest database vectors
x_i of q (the query itself has weight 1 = 1^alpha); the expanded query is searched again.
alpha = 0 is average query expansion (Chum et al. ICCV 2007). The formula is
:func:`retrievalkit.rerank.weighted_expansion`, shared with DBA.
"""

from __future__ import annotations

import numpy as np

from retrievalkit import Component, hookimpl
from retrievalkit.errors import ComponentOptionError
from retrievalkit.rerank import Neighbours, weighted_expansion


class AlphaQueryExpansion:
    """Query side: each query becomes the alpha-weighted mean of itself and its top ``k``."""

    def __init__(self, k: int = 2, alpha: float = 3.0) -> None:
        if k < 1:
            raise ComponentOptionError(f"aqe needs k >= 1 neighbours, got k={k}: e.g. aqe:k=2")
        if alpha < 0:
            raise ComponentOptionError(f"aqe needs alpha >= 0, got alpha={alpha}: e.g. aqe:alpha=3")
        self.k, self.alpha = k, alpha

    def expand_queries(self, queries: np.ndarray, neighbours: Neighbours,
                       self_rows: np.ndarray | None) -> np.ndarray:
        scores, ids = neighbours(queries, self.k, self_rows)
        return weighted_expansion(queries, neighbours.rows(ids), scores, ids, self.alpha)


@hookimpl
def rkit_rerankers() -> list[Component]:
    return [Component("aqe", AlphaQueryExpansion, "alpha-weighted query expansion (alpha-QE)",
                      "Radenović, Tolias, Chum, TPAMI 2018, sec. 5.2")]
