"""Importer for the ``db.pkl`` training files of retrieval-SfM-120k / 30k (Radenović et al.).

The public training data of Radenović, Tolias, Chum (ECCV 2016, and the TPAMI 2018 follow-up)
ships the SfM clustering of its images as a pickled dict with one entry per split
(``'train'``, ``'val'``), each holding:

``cids``     the image ids; image ``cid`` is the file ``ims/<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>``
             below the dataset folder
``cluster``  the 3D model (cluster) id of every image
``qidxs``    query image indices (into ``cids``) ...
``pidxs``    ... and the positive chosen for each, same length

The ``*-whiten.pkl`` files of the same data hold one such dict directly (``cids``, ``qidxs``,
``pidxs`` and, where present, ``cluster``), without the split level: it is read as a single
split. Where ``cluster`` is missing, images joined by a matching pair (``qidxs[i]``,
``pidxs[i]``) are put in one cluster (connected components of the pair graph), which is what a
3D model is for the miners. :func:`write_whitening_lists` turns such a file into an image list
and a pairs file for ``rkit extract`` + ``rkit whiten fit --pairs``.

An image id is a file name: one holding ``/``, ``\\`` or ``..`` is refused, so no ``db.pkl``
can make the loader read outside the images root.

It has no 3D points, so the database imported here has ``has_points == False``: the m1 and
random positive miners work, m2/m3 say that they need a database built by ``rkit sfm``
(:meth:`TrainingDatabase.require_points`). ``qidxs``/``pidxs`` are kept as
``TrainingDatabase.positive_pairs`` (Q, 2).

The pickle is read with a restricted unpickler that accepts only plain containers, numbers,
strings and numpy arrays, so a crafted file cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RkitError
from .trainingdb import TrainingDatabase

REQUIRED_KEYS = ("cids", "cluster", "qidxs", "pidxs")
_ALLOWED_GLOBALS = {
    ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "int"), ("builtins", "float"), ("builtins", "str"), ("builtins", "bytes"),
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a db.pkl")


def cid_to_path(cid: str) -> str:
    """The image file of ``cid`` relative to the dataset folder: ``ims/ab/cd/ef/<cid>``."""
    cid = str(cid)
    if "/" in cid or "\\" in cid or "\0" in cid or cid.strip(".") == "" or ".." in cid:
        raise RkitError(f"image id {cid!r} in the db.pkl is not a plain file name (it holds '/', '\\' or "
                        f"'..'): refused, it would point outside the images folder. The file is damaged or "
                        f"was crafted; download it again")
    if len(cid) < 6:
        raise RkitError(f"image id {cid!r} in the db.pkl is shorter than 6 characters; the file "
                        f"is not a retrieval-SfM db.pkl")
    return f"ims/{cid[-2:]}/{cid[-4:-2]}/{cid[-6:-4]}/{cid}"


def read_dbpkl(path: str | Path) -> dict[str, Any]:
    """The dict stored in a ``db.pkl`` (safely unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise RkitError(f"{path} does not exist: give the db.pkl of retrieval-SfM-120k or -30k.")
    try:
        with open(path, "rb") as fh:
            data = _SafeUnpickler(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise RkitError(f"{path} is not a readable retrieval-SfM db.pkl ({exc}).") from exc
    if not isinstance(data, dict):
        raise RkitError(f"{path} holds a {type(data).__name__}, not the dict of splits of a db.pkl.")
    return data


def import_dbpkl(path: str | Path, root: str | Path | None = None, split: str = "train") -> TrainingDatabase:
    """A :class:`TrainingDatabase` (clusters, no 3D points) from one split of a ``db.pkl``.

    ``root`` is the dataset folder holding ``ims/`` (default: the db.pkl's own folder); image
    paths are stored relative to it. Missing image files are not checked here (the training
    loader reports and skips them).
    """
    path = Path(path)
    data = read_dbpkl(path)
    if "cids" in data:          # a *-whiten.pkl: one split without the split level
        data = {split: data}
    if split not in data:
        raise RkitError(f"{path} has no split {split!r}; it has {', '.join(map(str, data)) or 'none'}. "
                        f"Choose one with --split.")
    entry = data[split]
    if not isinstance(entry, dict):
        raise RkitError(f"split {split!r} of {path} holds a {type(entry).__name__}, not the dict of "
                        f"{', '.join(REQUIRED_KEYS)} of a retrieval-SfM db.pkl.")
    if "cluster" not in entry and {"cids", "qidxs", "pidxs"} <= set(entry):
        entry = {**entry, "cluster": pair_components(len(entry["cids"]), entry["qidxs"], entry["pidxs"])}
    missing = [key for key in REQUIRED_KEYS if key not in entry]
    if missing:
        raise RkitError(f"split {split!r} of {path} lacks {', '.join(missing)}; a retrieval-SfM db.pkl "
                        f"has {', '.join(REQUIRED_KEYS)} per split.")
    cids = [str(c) for c in entry["cids"]]
    clusters = np.asarray(entry["cluster"], dtype=np.int64)
    if len(clusters) != len(cids):
        raise RkitError(f"split {split!r} of {path}: {len(cids)} cids but {len(clusters)} cluster ids.")
    qidxs = np.asarray(entry["qidxs"], dtype=np.int64)
    pidxs = np.asarray(entry["pidxs"], dtype=np.int64)
    if qidxs.shape != pidxs.shape:
        raise RkitError(f"split {split!r} of {path}: {len(qidxs)} qidxs but {len(pidxs)} pidxs.")
    if len(qidxs) and (min(qidxs.min(), pidxs.min()) < 0 or max(qidxs.max(), pidxs.max()) >= len(cids)):
        raise RkitError(f"split {split!r} of {path}: qidxs/pidxs point outside the {len(cids)} images.")
    return TrainingDatabase(
        images=[cid_to_path(c) for c in cids], clusters=clusters,
        root=Path(root) if root is not None else path.parent,
        meta={"source": "db.pkl", "dbpkl": str(path), "split": split},
        positive_pairs=np.stack([qidxs, pidxs], axis=1),
    )


def pair_components(count: int, qidxs: Any, pidxs: Any) -> np.ndarray:
    """Cluster id per image: the connected components of the matching-pair graph."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    q = np.asarray(qidxs, dtype=np.int64).reshape(-1)
    p = np.asarray(pidxs, dtype=np.int64).reshape(-1)
    if len(q) != len(p) or (len(q) and (min(q.min(), p.min()) < 0 or max(q.max(), p.max()) >= count)):
        raise RkitError(f"the qidxs/pidxs of the db.pkl do not pair images 0..{count - 1}: the file is damaged")
    graph = coo_matrix((np.ones(len(q)), (q, p)), shape=(count, count))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def write_whitening_lists(path: str | Path, images_root: str | Path) -> tuple[Path, Path]:
    """``<stem>-images.txt`` and ``<stem>-pairs.tsv`` beside a ``*-whiten.pkl``.

    The list names every image (relative to the list's folder) for ``rkit extract``; the pairs
    file has one ``A<TAB>B<TAB>1`` line per (qidxs, pidxs) pair with the same paths, for
    ``rkit whiten fit --pairs`` (matching pairs only: use ``--whiten learned:rotation=all``).
    """
    import os

    from .atomic import write_text_atomic

    path = Path(path)
    data = read_dbpkl(path)
    entry = data if "cids" in data else data.get("val", data.get("train", {}))
    if not {"cids", "qidxs", "pidxs"} <= set(entry):
        raise RkitError(f"{path} lacks cids/qidxs/pidxs: not a retrieval-SfM whitening file")
    stem = path.name.removesuffix(".pkl")
    folder = path.parent
    paths = [Path(os.path.relpath(Path(images_root) / cid_to_path(c), folder)).as_posix() for c in entry["cids"]]
    images, pairs = folder / f"{stem}-images.txt", folder / f"{stem}-pairs.tsv"
    write_text_atomic(images, "".join(f"{p}\n" for p in paths))
    write_text_atomic(pairs, "".join(f"{paths[int(q)]}\t{paths[int(p)]}\t1\n"
                                     for q, p in zip(entry["qidxs"], entry["pidxs"])))
    return images, pairs
