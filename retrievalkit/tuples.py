"""Training tuples: the one format miners produce and losses consume (docs/definitions.md §3).

A training tuple is ``(q, p, n_1 .. n_N)``: a query, one matching image and N non-matching
images. Miners give database indices; the trainer embeds the images and hands a loss the
embeddings ``(M, D)`` with a ``LongTensor`` of tuples ``(T, 2 + N)`` whose entries are row
indices into those embeddings. Because every miner and every loss agrees on this one format,
any miner works with any loss.

The distances a tuple defines are computed here once, :func:`tuple_squared_distances`, and
imported by the losses and by the trainer's metrics (mean positive / negative distance).
"""

from __future__ import annotations

import numpy as np
import torch

#: Squared distances below this are treated as this value before a square root, so the
#: gradient of ``||a - b||`` stays finite when two descriptors coincide.
DISTANCE_EPS = 1e-12


def check_tuples(tuples: torch.Tensor, num_embeddings: int) -> None:
    """Raise ``ValueError`` unless ``tuples`` is a ``(T, 2 + N)`` integer tensor of valid rows."""
    if tuples.ndim != 2 or tuples.shape[1] < 2:
        raise ValueError(f"tuples must be (T, 2 + N) = (query, positive, negatives...), got {tuple(tuples.shape)}")
    if tuples.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"tuples must be an integer tensor, got {tuples.dtype}")
    if tuples.numel() and (int(tuples.min()) < 0 or int(tuples.max()) >= num_embeddings):
        raise ValueError(f"tuple entries must index the {num_embeddings} embeddings")


def tuple_squared_distances(embeddings: torch.Tensor, tuples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``||f_q - f_p||^2`` per tuple ``(T,)`` and ``||f_q - f_n_j||^2`` per negative ``(T, N)``."""
    check_tuples(tuples, embeddings.shape[0])
    tuples = tuples.long()
    query = embeddings[tuples[:, 0]]
    positive = (query - embeddings[tuples[:, 1]]).pow(2).sum(dim=-1)
    negative = (query[:, None, :] - embeddings[tuples[:, 2:]]).pow(2).sum(dim=-1)
    return positive, negative


def safe_sqrt(squared: torch.Tensor) -> torch.Tensor:
    """``sqrt`` with a finite gradient at 0 (the distance of identical descriptors)."""
    return squared.clamp(min=DISTANCE_EPS).sqrt()


def assemble_tuples(queries: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """Stack mined indices into database-index tuples ``(T, 2 + N)``.

    ``positives`` (Q,) and ``negatives`` (Q, N) are aligned with ``queries`` (Q,). A query
    whose positive is ``-1`` (the miner found none) or with a ``-1`` negative is dropped.
    """
    queries = np.asarray(queries, dtype=np.int64).reshape(-1)
    positives = np.asarray(positives, dtype=np.int64).reshape(-1)
    negatives = np.asarray(negatives, dtype=np.int64).reshape(len(queries), -1)
    if len(positives) != len(queries):
        raise ValueError(f"{len(positives)} positives for {len(queries)} queries")
    rows = np.concatenate([queries[:, None], positives[:, None], negatives], axis=1)
    keep = (rows >= 0).all(axis=1)
    return rows[keep]
