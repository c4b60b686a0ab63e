"""Files of cvg/Hierarchical-Localization (hloc): retrieval pairs and global-descriptor HDF5.

hloc (Sarlin et al., "From Coarse to Fine: Robust Hierarchical Localization at Large Scale",
CVPR 2019) chains global retrieval, local matching and COLMAP. Two of its files carry what
retrievalkit computes, so our rankings and descriptors can feed its pipeline (and its pairs
files can feed ``rkit sfm --pairs FILE``):

**pairs file** (``hloc.pairs_from_retrieval``): plain text, one ``name1 name2`` per line, the
names relative to the image folder (``/``-separated, no spaces). For retrieval, every query
``name1`` is followed by its ``num_matched`` best database images ``name2`` in rank order, an
image never paired with itself (hloc masks the entries whose names are equal). hloc joins the
lines with ``\\n`` and ends without one; readers here accept either, ignore blank lines and
``#`` comments. (hloc's script also drops matches whose similarity is below 0; we keep the
rank order only, so with signed descriptors, e.g. after whitening, a few more pairs may appear.)

**global features** (``hloc.extract_features`` with a global model such as NetVLAD): an HDF5
file with one group per image name (a name containing ``/`` becomes nested groups, as h5py's
``create_group`` makes them), holding the dataset ``global_descriptor`` (shape ``(D,)``) and
``image_size`` (original ``(width, height)``). hloc finds the names by visiting every dataset
and taking its parent group's path (``list_h5_names``). hloc stores float16 by default
(``as_half``); we write float32 unless asked, which hloc reads the same way (it converts to
float). h5py is an optional extra: ``pip install "retrievalkit[hloc]"``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .atomic import atomic_path, write_text_atomic
from .errors import RkitError

if TYPE_CHECKING:
    from .search import SearchResults

DESCRIPTOR_KEY = "global_descriptor"
SIZE_KEY = "image_size"
META_ATTRIBUTE = "retrievalkit_meta"

Pair = tuple[str, str]


# -- pairs files ----------------------------------------------------------------------------
def retrieval_pairs(query_names: Sequence[str], ranked: Iterable[Sequence[str]],
                    num_matched: int) -> list[Pair]:
    """The ``(query, match)`` pairs of hloc's pairs-from-retrieval.

    ``ranked[i]`` lists the database names for query ``i``, best first; the query's own name is
    skipped (self-match) and the first ``num_matched`` others are kept.
    """
    if num_matched < 1:
        raise RkitError(f"--num-matched {num_matched}: give at least 1 image per query")
    pairs: list[Pair] = []
    for query, names in zip(query_names, ranked):
        others = [name for name in names if name != query][:num_matched]
        pairs.extend((query, name) for name in others)
    return pairs


def hloc_pairs_text(query_names: Sequence[str], ids: np.ndarray, database_names: Sequence[str],
                    root: str | Path | None, num_matched: int) -> str:
    """The pairs file of a search: query ``i``'s results ``ids[i]`` (database rows, best first,
    -1 for none) as ``query match`` lines, names relative to the image folder ``root``."""
    queries = [relative_name(name, root) for name in query_names]
    database = [relative_name(name, root) for name in database_names]
    ranked = ([database[j] for j in row if j >= 0] for row in np.asarray(ids).tolist())
    return pairs_text(retrieval_pairs(queries, ranked, num_matched))


def results_to_pairs_text(results: SearchResults) -> str:
    """The pairs file of :class:`~retrievalkit.search.SearchResults`: ``info["num_matched"]``
    matches per query (default: all its results but itself). Search ``num_matched + 1``
    neighbours when the queries are in the database, as ``rkit search --format hloc-pairs``
    does, since each query's own row is left out."""
    num_matched = int(results.info.get("num_matched", results.ids.shape[1] if results.ids.ndim == 2 else 1))
    return hloc_pairs_text(results.query_names, results.ids, results.database_paths, results.root,
                           max(1, num_matched))


def pairs_text(pairs: Iterable[Pair]) -> str:
    """The text of a pairs file (one ``name1 name2`` per line, a final newline)."""
    lines = []
    for a, b in pairs:
        for name in (a, b):
            if not name or any(c.isspace() for c in name):
                raise RkitError(f"image name {name!r} cannot go into a pairs file (empty or with "
                                f"spaces, and the file separates names by a space): rename the image")
        lines.append(f"{a} {b}\n")
    return "".join(lines)


def write_pairs(path: str | Path, pairs: Iterable[Pair]) -> Path:
    """Write ``pairs`` to ``path`` atomically as an hloc pairs file."""
    write_text_atomic(path, pairs_text(pairs))
    return Path(path)


def read_pairs(path: str | Path) -> list[Pair]:
    """The ``(name1, name2)`` pairs of an hloc pairs file, in file order (duplicates kept)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RkitError(f"pairs file {path} does not exist: give a file with one 'name1 name2' "
                        f"per line (hloc's pairs-from-retrieval format)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RkitError(f"cannot read pairs file {path} ({exc}): it must be UTF-8 text with one "
                        f"'name1 name2' per line") from None
    pairs: list[Pair] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2:
            raise RkitError(f"{path}, line {number}: {line[:80]!r} is not 'name1 name2' (two image "
                            f"names relative to the image folder, separated by a space)")
        pairs.append((fields[0], fields[1]))
    return pairs


def relative_name(name: str, root: str | Path | None) -> str:
    """``name`` as a pairs file wants it: relative to the image folder ``root``, '/'-separated.

    A name that already exists below ``root`` is kept; a path (absolute, or relative to the
    working folder) that lies below ``root`` is made relative to it; anything else is kept.
    """
    path = Path(name)
    if root is None:
        return path.as_posix()
    root = Path(root)
    if not path.is_absolute() and (root / path).exists():
        return path.as_posix()
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except (ValueError, OSError):
        return path.as_posix()


# -- global features (HDF5) -----------------------------------------------------------------
def require_h5py() -> Any:
    """The h5py module, or a clear error saying how to install it (an optional extra)."""
    try:
        import h5py
    except ImportError:
        raise RkitError("HDF5 output needs h5py, an optional extra: pip install \"retrievalkit[hloc]\" "
                        "(or pip install h5py)") from None
    return h5py


def write_global_features(path: str | Path, names: Sequence[str], descriptors: np.ndarray,
                          image_sizes: Sequence[tuple[int, int]] | None = None,
                          half: bool = False, meta: dict[str, Any] | None = None) -> Path:
    """Write hloc's global-feature HDF5: group ``name`` -> ``global_descriptor`` (and
    ``image_size``); atomically (a temporary file renamed when complete). ``meta`` (how the
    descriptors were made) goes into the file's attribute ``retrievalkit_meta`` as JSON."""
    h5py = require_h5py()
    descriptors = np.asarray(descriptors, dtype=np.float16 if half else np.float32)
    if descriptors.ndim != 2 or len(descriptors) != len(names):
        raise ValueError(f"descriptors {descriptors.shape} do not have one row per name ({len(names)})")
    if image_sizes is not None and len(image_sizes) != len(names):
        raise ValueError(f"{len(image_sizes)} image sizes for {len(names)} names")
    if len(set(names)) != len(names):
        raise RkitError("two descriptors have the same image name: an HDF5 file keyed by name holds one each")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", libver="latest") as fd:
            if meta is not None:
                fd.attrs[META_ATTRIBUTE] = json.dumps(meta)
            for row, name in enumerate(names):
                group = fd.create_group(Path(name).as_posix())
                group.create_dataset(DESCRIPTOR_KEY, data=descriptors[row])
                if image_sizes is not None:
                    group.create_dataset(SIZE_KEY, data=np.asarray(image_sizes[row], dtype=np.int64))
    return Path(path)


def read_global_features(path: str | Path) -> tuple[list[str], np.ndarray]:
    """The image names (sorted) and float32 descriptors of an hloc global-feature file."""
    h5py = require_h5py()
    found: dict[str, np.ndarray] = {}

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset) and name.rsplit("/", 1)[-1] == DESCRIPTOR_KEY:
            found[obj.parent.name.strip("/")] = np.asarray(obj[()], dtype=np.float32)

    try:
        with h5py.File(path, "r") as fd:
            fd.visititems(visit)
    except OSError as exc:
        raise RkitError(f"cannot read {path} as an HDF5 file ({exc})") from None
    if not found:
        raise RkitError(f"{path} holds no '{DESCRIPTOR_KEY}' dataset: not an hloc global-feature file")
    names = sorted(found)
    return names, np.stack([found[n] for n in names])


def raw_image_sizes(root: str | Path | None, names: Sequence[str]) -> list[tuple[int, int]]:
    """(width, height) of each image as stored (no EXIF rotation, as hloc reads them)."""
    from PIL import Image

    sizes = []
    for name in names:
        with Image.open(Path(root or ".") / name) as image:
            sizes.append((int(image.size[0]), int(image.size[1])))
    return sizes


__all__ = ["retrieval_pairs", "hloc_pairs_text", "results_to_pairs_text", "pairs_text", "write_pairs", "read_pairs", "relative_name",
           "write_global_features", "read_global_features", "raw_image_sizes", "require_h5py"]
