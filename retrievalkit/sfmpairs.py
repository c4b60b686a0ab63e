"""Which image pairs ``rkit sfm`` matches: exhaustive, retrieval neighbours, sequential, a file.

Matching every pair costs n(n-1)/2 two-view matchings; SfM pipelines that scale pick pairs
instead. A *pair source* names one way, and ``rkit sfm`` matches the union of its sources
(``--pairs`` repeated):

``exhaustive``               every unordered pair;
``retrieval``                each image with its ``k`` nearest neighbours by a global descriptor
                             (retrieval-guided SfM, as in Radenović et al. 2016, section 3, and
                             hloc's pairs-from-retrieval), made symmetric;
``sequential:overlap=N``     ordered photo sequences (a walk, a video): within each folder, images
                             ``i`` and ``j`` of the sorted names with ``|i - j| <= N``;
``auto``                     exhaustive up to ``exhaustive_below`` images, else retrieval;
a file                       an hloc pairs file (:mod:`retrievalkit.hloc`; one ``name1 name2`` per
                             line, names relative to the image folder), e.g. from
                             ``rkit search --format hloc-pairs``.

Pairs are unordered: ``(a, b)`` and ``(b, a)`` are one pair, written with ``a < b``; an image is
never paired with itself.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RkitError

Pair = tuple[str, str]
KEYWORDS = ("auto", "exhaustive", "retrieval", "sequential")
_SEQUENTIAL = re.compile(r"sequential(?::overlap=(\d+))?$")


def exhaustive_pairs(names: Sequence[str]) -> list[Pair]:
    """Every unordered pair of images."""
    return [(names[a], names[b]) for a in range(len(names)) for b in range(a + 1, len(names))]


def neighbour_pairs(descriptors: np.ndarray, names: Sequence[str], k: int) -> list[Pair]:
    """Unordered pairs (a, b) where b is among the ``k`` nearest descriptors of a or vice versa.

    ``descriptors`` are L2-normalised rows; nearness is the dot product (exact search).
    """
    descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
    n = len(names)
    k = max(0, min(k, n - 1))
    if k == 0:
        return []
    from .index import build_index, search

    _, ids = search(build_index(descriptors, "flat"), descriptors, k + 1)
    chosen: set[tuple[int, int]] = set()
    for a in range(n):
        for b in [int(x) for x in ids[a] if int(x) != a and int(x) >= 0][:k]:
            chosen.add((min(a, b), max(a, b)))
    return [(names[a], names[b]) for a, b in sorted(chosen)]


def sequential_pairs(names: Sequence[str], overlap: int) -> list[Pair]:
    """Pairs of ordered photo sequences: within each folder, images ``i < j`` of the sorted
    names with ``j - i <= overlap`` (neighbours in a walk or a video overlap)."""
    if overlap < 1:
        raise RkitError(f"--pairs sequential:overlap={overlap}: the overlap must be at least 1")
    folders: dict[str, list[str]] = {}
    for name in sorted(names):
        folders.setdefault(name.rsplit("/", 1)[0] if "/" in name else "", []).append(name)
    pairs: list[Pair] = []
    for members in folders.values():
        for i, a in enumerate(members):
            pairs.extend((a, b) for b in members[i + 1:i + 1 + overlap])
    return pairs


def resolve_sources(specs: str | Sequence[str], num_images: int, exhaustive_below: int) -> list[str]:
    """Check the ``--pairs`` values and resolve them: ``auto`` becomes ``exhaustive`` or
    ``retrieval``, ``sequential`` gets its overlap spelled out, a file becomes ``file:PATH``
    (absolute); duplicates are dropped, order kept."""
    specs = [specs] if isinstance(specs, str) else list(specs)
    if not specs:
        raise RkitError("no pair source given: use --pairs auto, exhaustive, retrieval, "
                        "sequential:overlap=N or a pairs file")
    resolved: list[str] = []
    for spec in specs:
        spec = spec.strip()
        if spec == "auto":
            spec = "exhaustive" if num_images <= exhaustive_below else "retrieval"
        elif spec.startswith("sequential"):
            match = _SEQUENTIAL.match(spec)
            if match is None:
                raise RkitError(f"--pairs {spec!r}: write sequential:overlap=N (N images before and "
                                f"after each image of a folder, e.g. sequential:overlap=5)")
            spec = f"sequential:overlap={int(match.group(1) or 5)}"
        elif spec not in KEYWORDS:
            path = Path(spec[5:] if spec.startswith("file:") else spec)
            if not path.is_file():
                raise RkitError(f"--pairs {spec!r} is neither auto, exhaustive, retrieval, "
                                f"sequential:overlap=N nor an existing pairs file (one 'name1 name2' "
                                f"per line, names relative to the image folder)")
            spec = f"file:{path.resolve()}"
        if spec not in resolved:
            resolved.append(spec)
    return resolved


def source_inputs(sources: Sequence[str]) -> dict[str, Any]:
    """What the pairs depend on besides the images and options: each pairs file's content."""
    files = [s[5:] for s in sources if s.startswith("file:")]
    return {"pair_files_sha256": [hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files]} \
        if files else {}


def pairs_from_file(path: str | Path, names: Sequence[str], log: Callable[[str], None]) -> list[Pair]:
    """The pairs of an hloc pairs file among ``names``; pairs naming other images are dropped
    (and counted in the log), none left is an error."""
    from .hloc import read_pairs

    known = set(names)
    given = read_pairs(path)
    inside = [(a, b) for a, b in given if a in known and b in known]
    kept = [(a, b) for a, b in inside if a != b]
    unknown = sorted({n for pair in given for n in pair if n not in known})
    if unknown:
        log(f"[pairs] {path}: {len(given) - len(inside)} of {len(given)} pairs name images that are "
            f"not readable images of this folder (e.g. {unknown[0]}); dropped")
    if not kept:
        raise RkitError(f"no pair of {path} names two readable images of the folder: the names must "
                        f"be relative to the image folder given to rkit sfm (e.g. {sorted(known)[0]})")
    return kept


def select_pairs(names: Sequence[str], sources: Sequence[str], log: Callable[[str], None],
                 retrieval: Callable[[], np.ndarray], k: int) -> list[Pair]:
    """The union of the pairs of every resolved source (:func:`resolve_sources`), unordered,
    sorted. ``retrieval()`` gives the global descriptors (rows as ``names``) when needed."""
    chosen: set[Pair] = set()
    for source in sources:
        if source == "exhaustive":
            pairs = exhaustive_pairs(names)
        elif source == "retrieval":
            pairs = neighbour_pairs(retrieval(), names, k)
        elif source.startswith("sequential:overlap="):
            pairs = sequential_pairs(names, int(source.split("=", 1)[1]))
        else:
            pairs = pairs_from_file(source[5:], names, log)
        before = len(chosen)
        chosen.update(_unordered(pairs))
        log(f"[pairs] {source}: {len(pairs)} pairs, {len(chosen) - before} new")
    return sorted(chosen)


def _unordered(pairs: Iterable[Pair]) -> Iterable[Pair]:
    return ((min(a, b), max(a, b)) for a, b in pairs if a != b)


__all__ = ["exhaustive_pairs", "neighbour_pairs", "sequential_pairs", "resolve_sources",
           "source_inputs", "pairs_from_file", "select_pairs"]
