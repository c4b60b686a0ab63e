"""The hook specifications: one per kind of component (:data:`retrievalkit.components.PLURAL`).

A plugin is a module (or object) with functions marked ``@retrievalkit.hookimpl`` whose names are
the hooks below. Each hook returns a list of :class:`retrievalkit.Component`; the core calls every
plugin's implementation, checks that no two plugins offer the same name for the same kind, and
builds a component only when the user asks for it by name. A hook implementation whose name
matches none of these specifications is an error when the plugins are loaded.

What each component's factory must return is written on its hook below. Miners and losses
exchange plain index tuples (see :mod:`retrievalkit.tuples`), so any miner works with any loss.
"""

from __future__ import annotations

import pluggy

from .components import KINDS, PLURAL, Component

PROJECT = "retrievalkit"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def rkit_backbones() -> list[Component]:
    """Backbones: the convolutional part of a CNN, image batch -> feature map.

    The factory takes ``weights: str`` (``imagenet``, ``none`` or a path to a local state
    dict) and returns a ``torch.nn.Module`` that maps a normalised batch ``(B, 3, H, W)`` to
    activations ``(B, K, h, w)`` and has the attributes ``out_channels: int`` (K),
    ``mean`` and ``std`` (3-tuples: the input normalisation it was trained with, applied by
    :class:`retrievalkit.model.RetrievalModel` to images in [0, 1]).
    """


@hookspec
def rkit_poolings() -> list[Component]:
    """Poolings: feature map ``(B, K, H, W)`` -> global descriptor ``(B, K)``.

    The factory returns a ``torch.nn.Module``. It must *not* L2-normalise: the model does that
    once for every pooling (docs/definitions.md §1). A pooling with a generalised-mean exponent exposes it
    as the attribute ``p`` so multi-scale extraction can combine scales with the same mean.
    """


@hookspec
def rkit_whitenings() -> list[Component]:
    """Whitenings: learn a linear projection of descriptors (docs/definitions.md §2).

    The factory takes ``dim: int | None`` (output dimension; ``None`` keeps all) and method
    options, and returns an object with ``fit(data: retrievalkit.whitening.WhiteningData) ->
    retrievalkit.whitening.FittedWhitening`` and ``needs: str`` (``descriptors``, ``pairs`` or
    ``labels``: the supervision it requires, so the CLI can say what is missing).
    """


@hookspec
def rkit_miners() -> list[Component]:
    """Miners: choose training tuples from a training database (docs/definitions.md §4).

    The factory returns an object with ``role`` (``"positive"`` or ``"negative"``),
    ``needs_descriptors: bool`` (whether the trainer must extract the pool's descriptors with
    the current network before mining), ``needs_points: bool`` (whether it reads the 3D points)
    and a ``mine`` method (protocols ``PositiveMiner`` / ``NegativeMiner`` in
    :mod:`retrievalkit.mining`)::

        positive: mine(queries (Q,), db, descriptors (len(db), D) | None, rng) -> (Q,)
                  one positive per query, -1 where the query has none
        negative: mine(queries (Q,), db, descriptors | None, num_negatives, rng, pool=None)
                  -> (Q, num_negatives), never from the query's 3D model

    ``db`` is a :class:`retrievalkit.trainingdb.TrainingDatabase`, ``rng`` a
    ``numpy.random.Generator`` (the miner's only source of randomness). Results are plain
    integer indices of database images, joined into (q, p, n_1 .. n_N) tuples by
    :func:`retrievalkit.tuples.assemble_tuples`.
    """


@hookspec
def rkit_losses() -> list[Component]:
    """Losses on tuples (docs/definitions.md §3).

    The factory returns a ``torch.nn.Module`` called as ``loss(embeddings, tuples)`` with
    ``embeddings`` ``(M, D)`` L2-normalised descriptors and ``tuples`` a ``LongTensor``
    ``(T, 2 + N)`` whose rows are ``(query, positive, negative_1 .. negative_N)`` row indices
    into ``embeddings``; it returns a scalar (the sum over tuples, docs/definitions.md §3).
    """


@hookspec
def rkit_rerankers() -> list[Component]:
    """Re-rankers: change the descriptors a search compares, then search again (:mod:`retrievalkit.rerank`).

    The factory takes the re-ranker's options (the built-ins: ``k``, ``alpha``) and returns an
    object with one or both of::

        augment_database(database (N, D), neighbours) -> (N, D)         database side (DBA)
        expand_queries(queries (Q, D), neighbours, self_rows) -> (Q, D)  query side (alpha-QE)

    ``neighbours(vectors, k, self_rows=None) -> (scores, ids)`` is the exact top ``k`` in the
    current database, leaving out row ``self_rows[i]`` for vector ``i`` when given (the vector
    is that database row); ``neighbours.rows(ids)`` gives those database vectors. Returned rows
    must be L2-normalised float32. Database-side results are cached per database and options.
    """


#: Hook name for each component kind: ``rkit_`` + the plural (``backbone`` -> ``rkit_backbones``).
HOOK_FOR_KIND: dict[str, str] = {kind: f"rkit_{PLURAL[kind]}" for kind in KINDS}

_missing = [hook for hook in HOOK_FOR_KIND.values() if not callable(globals().get(hook))]
if _missing:  # a kind added to components.PLURAL without its specification here
    raise ImportError(f"retrievalkit.hookspecs lacks the hook specification(s) {', '.join(_missing)}")
