"""Reading evaluation data: image labels, and the revisited Oxford / Paris benchmark layout.

Labels (:func:`folder_labels`, :func:`read_labels`) are read here and nowhere else: ``rkit eval``,
``rkit whiten fit --labels``, ``rkit ablate`` and training's validation all call these.

Revisited Oxford / Paris layout (as distributed with the revisited benchmarks, Radenović et al., CVPR 2018)::

    DATA_ROOT/<name>/gnd_<name>.pkl
    DATA_ROOT/<name>/jpg/<image name>.jpg

``gnd_<name>.pkl`` is a pickled dict:

``imlist``   database image names (no extension)
``qimlist``  query image names (no extension); queries are cropped to their box
``gnd``      one dict per query: ``bbx`` = [x1, y1, x2, y2] in original pixels and the
             database indices of its ``easy``, ``hard`` and ``junk`` images (revisited
             ground truth), or of its ``ok`` and ``junk`` images (classic Oxford5k/Paris6k,
             where ``ok`` = the old "good" + "ok").

Evaluation settings (docs/definitions.md §5), as (positive kinds, junk kinds):

``easy``     positives easy,          junk = junk + hard
``medium``   positives easy + hard,   junk = junk
``hard``     positives hard,          junk = junk + easy
``classic``  the old Oxford protocol: positives ``ok`` (= good + ok), junk = junk. On revisited
             ground truth it is computed as positives easy + hard, junk = junk, which is the
             same definition as ``medium``.

The pickle is read with an unpickler that only accepts plain containers and NumPy arrays, so a
tampered ground-truth file cannot run code.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import re
from collections.abc import Sequence
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from .errors import RkitError

#: names of the standard datasets (any other name works with the same layout)
KNOWN_DATASETS: tuple[str, ...] = ("roxford5k", "rparis6k", "oxford5k", "paris6k")

#: setting -> (positive kinds, junk kinds) on revisited ground truth
REVISITED_SETTINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
    "classic": (("easy", "hard"), ("junk",)),
}
#: setting -> (positive kinds, junk kinds) on classic ground truth
CLASSIC_SETTINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "classic": (("ok",), ("junk",)),
}

IMAGE_FOLDER = "jpg"
IMAGE_EXTENSION = ".jpg"

_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "int"), ("builtins", "float"), ("builtins", "str"),
    ("collections", "OrderedDict"),
}


class _GroundTruthUnpickler(pickle.Unpickler):
    """Only containers and NumPy arrays: a ground-truth file has no reason to hold anything else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS or (module.startswith("numpy") and name == "dtype"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a ground-truth file")


def _read_pickle(path: Path) -> Any:
    data = path.read_bytes()
    try:
        return _GroundTruthUnpickler(io.BytesIO(data)).load()
    except UnicodeDecodeError:          # written by Python 2
        unpickler = _GroundTruthUnpickler(io.BytesIO(data), encoding="latin1")
        return unpickler.load()


# -- labels -----------------------------------------------------------------------------------
_WINDOWS_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")


def _pure_path(path: str | PurePath) -> PurePath:
    """A path split into its real components.

    Descriptors files store POSIX paths (``rkit extract`` writes ``a/b.jpg`` on every system),
    so ``/`` separates and a backslash is an ordinary character of a file name (``x/a\\b.jpg``
    is the file ``a\\b.jpg`` in folder ``x``). Only a Windows absolute path (``C:\\...``,
    ``\\\\server\\...``) or a path on a Windows system is split at backslashes.
    """
    if isinstance(path, PurePath):
        return path
    text = str(path)
    if os.sep == "\\" or _WINDOWS_ABSOLUTE.match(text):
        return PureWindowsPath(text)
    return PurePosixPath(text)


def folder_labels(paths: Sequence[str | PurePath]) -> list[str]:
    """The class of each image: the name of its parent folder (``""`` for a bare file name)."""
    return [_pure_path(p).parent.name for p in paths]


def read_labels(spec: str | Path, paths: Sequence[str]) -> np.ndarray:
    """Labels for ``paths``: ``"folder"`` (each path's parent folder) or a ``PATH<TAB>LABEL`` file.

    The file has one line per image (blank lines and ``#`` comments ignored); every path of
    ``paths`` needs a line.

    Raises:
        RkitError: the file is missing, malformed, or lacks a label for some path.
    """
    if str(spec) == "folder":
        return np.asarray(folder_labels(paths))
    path = Path(spec)
    if not path.is_file():
        raise RkitError(f"--labels {str(spec)!r}: write 'folder' (the parent folder of each image is its label) "
                        f"or give a file with one PATH<TAB>LABEL line per image")
    given: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.rstrip("\n").split("\t")
        if len(fields) != 2:
            raise RkitError(f"{path}:{lineno}: expected PATH<TAB>LABEL, got {line!r}")
        given[fields[0].strip()] = fields[1].strip()
    missing = [p for p in paths if p not in given]
    if missing:
        raise RkitError(f"{path} gives no label for {len(missing)} of the {len(paths)} images (first: "
                        f"{missing[0]!r}): add a PATH<TAB>LABEL line for each path of the descriptors file")
    return np.asarray([given[p] for p in paths])


@dataclasses.dataclass
class RevisitedDataset:
    """A retrieval benchmark in the revisited Oxford/Paris layout.

    Attributes:
        name: the dataset name (``roxford5k``).
        root: ``DATA_ROOT/<name>``.
        images: database image names (no extension), index = database id.
        queries: query image names (no extension).
        ground_truth: per query, kind (``easy``, ``hard``, ``junk`` or ``ok``, ``junk``) ->
            database ids.
        boxes: per query, the crop box (x1, y1, x2, y2) in original pixels, or None.
    """

    name: str
    root: Path
    images: list[str]
    queries: list[str]
    ground_truth: list[dict[str, np.ndarray]]
    boxes: list[tuple[float, float, float, float] | None]

    @property
    def image_dir(self) -> Path:
        """The folder holding every image (database and query)."""
        return self.root / IMAGE_FOLDER

    @property
    def is_revisited(self) -> bool:
        """True for revisited ground truth (easy/hard), False for classic (ok)."""
        return bool(self.ground_truth) and "easy" in self.ground_truth[0]

    def image_paths(self) -> list[str]:
        """Database image files, relative to :attr:`image_dir`."""
        return [name + IMAGE_EXTENSION for name in self.images]

    def query_paths(self) -> list[str]:
        """Query image files, relative to :attr:`image_dir` (crop them with :meth:`query_crops`)."""
        return [name + IMAGE_EXTENSION for name in self.queries]

    def query_crops(self) -> list[tuple[float, float, float, float] | None]:
        """The query boxes, in the form ``extract_descriptors(crops=...)`` takes."""
        return list(self.boxes)

    def settings(self) -> tuple[str, ...]:
        """The settings to report: easy/medium/hard (revisited) or classic."""
        return ("easy", "medium", "hard") if self.is_revisited else ("classic",)

    def match(self, paths: list[str], *, queries: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Which dataset image (or query, with ``queries=True``) each of ``paths`` is.

        A path matches by its name without extension, relative to :attr:`image_dir` or by file
        name (``jpg/all_souls_000013.jpg``, ``all_souls_000013.jpg`` and an absolute path all
        match ``all_souls_000013``). Returns ``(ids, rows)``: the dataset ids found and the
        row of ``paths`` for each; paths that match nothing (and repeats) are ignored.
        """
        names = self.queries if queries else self.images
        position = {name: i for i, name in enumerate(names)}
        ids: list[int] = []
        rows: list[int] = []
        seen: set[int] = set()
        for row, path in enumerate(paths):
            pure = _pure_path(path)
            key = pure.with_suffix("").as_posix()
            found = position.get(key, position.get(pure.stem))
            if found is None and pure.is_absolute():
                try:
                    found = position.get(pure.relative_to(_pure_path(str(self.image_dir))).with_suffix("").as_posix())
                except ValueError:
                    found = None
            if found is not None and found not in seen:
                seen.add(found)
                ids.append(found)
                rows.append(row)
        return np.asarray(ids, dtype=np.int64), np.asarray(rows, dtype=np.int64)

    def setting(self, name: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per-query positive ids and junk ids under setting ``name`` (module docstring)."""
        table = REVISITED_SETTINGS if self.is_revisited else CLASSIC_SETTINGS
        if name not in table:
            raise RkitError(
                f"setting {name!r} does not exist for {self.name} "
                f"({'revisited' if self.is_revisited else 'classic'} ground truth): "
                f"choose one of {', '.join(table)}"
            )
        positive_kinds, junk_kinds = table[name]
        positives = [np.unique(np.concatenate([gt[k] for k in positive_kinds])) for gt in self.ground_truth]
        junk = [np.unique(np.concatenate([gt[k] for k in junk_kinds])) for gt in self.ground_truth]
        return positives, junk


def _ids(value: Any, n_images: int, where: str) -> np.ndarray:
    ids = np.asarray(value if value is not None else [], dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= n_images):
        raise RkitError(f"{where} refers to image ids outside 0..{n_images - 1}: the ground-truth file is damaged")
    return ids


def dataset_root(data_root: str | Path, name: str) -> Path:
    """``DATA_ROOT/<name>``."""
    return Path(data_root) / name


def load_revisited(data_root: str | Path, name: str, *, require_images: bool = True) -> RevisitedDataset:
    """Read ``DATA_ROOT/<name>/gnd_<name>.pkl`` (the images are not opened here).

    ``require_images=False`` skips the check that the ``jpg/`` folder exists (for evaluating
    descriptors extracted elsewhere).

    Raises:
        RkitError: the file or the image folder is missing, or the ground truth is malformed.
    """
    root = dataset_root(data_root, name)
    gnd_path = root / f"gnd_{name}.pkl"
    if not gnd_path.is_file():
        hint = (f"download {name} with `rkit data download {name} --root {data_root}` (gnd_{name}.pkl "
                f"and the jpg/ folder go into {root})" if name in ("roxford5k", "rparis6k") else
                f"download {name} (gnd_{name}.pkl and the jpg/ folder) into {root}"
                if name in KNOWN_DATASETS else
                f"check the name (known: {', '.join(KNOWN_DATASETS)}) and --data-root")
        raise RkitError(f"ground-truth file {gnd_path} not found: {hint}")
    try:
        raw = _read_pickle(gnd_path)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise RkitError(f"{gnd_path} is not a readable ground-truth pickle ({exc}): download it again") from exc
    if not isinstance(raw, dict) or not {"imlist", "qimlist", "gnd"} <= set(raw):
        raise RkitError(
            f"{gnd_path} lacks the keys imlist, qimlist and gnd of the revisited benchmark format: "
            f"it is not a gnd_<name>.pkl file"
        )
    images = [str(x) for x in raw["imlist"]]
    queries = [str(x) for x in raw["qimlist"]]
    entries = list(raw["gnd"])
    if len(entries) != len(queries):
        raise RkitError(f"{gnd_path} has {len(queries)} queries but {len(entries)} ground-truth entries: the file is damaged")
    ground_truth, boxes = [], []
    for q, entry in enumerate(entries):
        kinds = ("easy", "hard", "junk") if "easy" in entry else ("ok", "junk") if "ok" in entry else None
        if kinds is None:
            raise RkitError(
                f"{gnd_path}: query {q} ({queries[q]}) has neither easy/hard nor ok lists: "
                f"not a revisited or classic Oxford/Paris ground truth"
            )
        ground_truth.append({k: _ids(entry.get(k), len(images), f"{gnd_path} query {q} '{k}'") for k in kinds})
        box = entry.get("bbx")
        boxes.append(None if box is None or len(box) != 4 else tuple(float(v) for v in box))
    if len({tuple(sorted(gt)) for gt in ground_truth}) > 1:
        raise RkitError(f"{gnd_path} mixes revisited (easy/hard) and classic (ok) entries: the file is damaged")
    if require_images and not (root / IMAGE_FOLDER).is_dir():
        raise RkitError(f"image folder {root / IMAGE_FOLDER} not found: put the {name} jpg files there")
    return RevisitedDataset(name=name, root=root, images=images, queries=queries,
                            ground_truth=ground_truth, boxes=boxes)
