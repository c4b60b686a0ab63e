"""Ablation grids: every combination of components and options, with the work shared.

An ablation evaluates each *cell* of a grid (a choice of backbone, weights, pooling, image
size, scales, whitening and output dimension) on a folder-per-class collection
(docs/definitions.md §5: every image a query against the others, mAP and mP@k).

Work sharing. Extracting descriptors is the expensive step; whitening and dimension reduction
act on descriptors. The cells are therefore grouped by their *extraction key* (backbone,
weights, pooling, image size, scales): each group's descriptors are extracted once, stored in
``OUT/descriptors/``, and reused by every whitening and dimension of the group. Each whitening
is in turn fitted once per group and training subset with every meaningful direction and
truncated to each ``dim`` (:class:`WhiteningFits`; stored in ``OUT/whitenings/``).

Resume. Each cell's result is written atomically to ``OUT/cells/<id>.json`` when it is done,
the id being a hash of the cell's settings and of the image lists, so a re-run (with the same
or a larger grid) skips every finished cell and every stored extraction; an interrupted
extraction resumes from its checkpoint (:func:`retrievalkit.extract.extract_descriptors`).
A failing cell (an unknown component, a dimension the whitening cannot give ...) is recorded
with its error and the grid goes on; failed cells are tried again on the next run.

Whitening is never learned on the images it is evaluated on:

* with ``whiten_data`` (a separate folder-per-class collection) it is learned there once per
  cell;
* otherwise by **leave-one-class-out**: for each class ``c`` of the evaluation collection the
  whitening is learned on the images of all the other classes, every image is projected with
  it, and the AP of the queries of class ``c`` is read from that ranking. So a query's own
  landmark, its positives and itself never influence the projection it is ranked with; the
  other classes (which include its negatives) do. mAP and mP@k are the means over all queries
  of these per-query values. It costs one fit per class and cell.

Grid axes (``--grid AXIS=V1,V2``): ``backbone``, ``weights``, ``pooling``, ``image_size``,
``scales`` (several scales of one cell joined by ``+``: ``1+0.707+0.5``), ``whiten``, ``dim``
(an integer, or ``full``), ``rerank`` (a re-ranking chain: ``none``, ``aqe``, ``dba+aqe``; see
:mod:`retrievalkit.rerank`), and ``KIND.OPTION`` for one option of the chosen component
(``pooling.p=2,3,4``, ``whiten.ridge=0.1,1``). Values are split on ``,``; component specs keep
their options after ``:`` (``pooling=gem:p=4,mac``). Whitening ``none`` keeps every dimension,
so cells that differ only in ``dim`` under ``whiten=none`` are one cell (``dim=full``).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_text_atomic
from .components import ComponentSpec
from .descriptors import DescriptorSet
from .errors import RkitError
from .settings import ModelConfig

ABLATION_FORMAT_VERSION = 1

#: Settings of a cell, in display order, with their defaults.
DEFAULT_SETTINGS: dict[str, str] = {
    "backbone": ModelConfig.backbone,
    "weights": ModelConfig.weights,
    "pooling": ModelConfig.pooling,
    "image_size": "1024",
    "scales": "1",
    "whiten": "none",
    "dim": "full",
}
#: Settings kept out of a cell's settings while they have their default (so cells, and their ids,
#: stay what they were before the setting existed).
OPTIONAL_SETTINGS: dict[str, str] = {"rerank": "none"}
#: The settings that determine the descriptors (one extraction per distinct combination).
EXTRACTION_KEYS: tuple[str, ...] = ("backbone", "weights", "pooling", "image_size", "scales")
#: Settings that are component specs, with their kind (for ``KIND.OPTION`` axes).
COMPONENT_AXES: dict[str, str] = {"backbone": "backbone", "pooling": "pooling", "whiten": "whitening"}
_ALIASES = {"image-size": "image_size", "size": "image_size", "whitening": "whiten", "scale": "scales"}
_FULL_DIM = {"full", "none", "all", ""}
#: The cut-offs of mP@k shown in tables.
TABLE_KS: tuple[int, ...] = (1, 5, 10)


# -- the grid ---------------------------------------------------------------------------------

def canonical_axis(name: str) -> str:
    """The axis ``name`` as stored (``image-size`` -> ``image_size``); unknown names are errors."""
    key = name.strip().lower()
    if key.partition(".")[0] == "whitening":    # elsewhere --whitening names a fitted FILE
        import warnings

        from .errors import RkitWarning

        warnings.warn(f"grid axis {name!r} is deprecated: use {'whiten' + key[len('whitening'):]!r} "
                      f"(the whitening method to fit, as `rkit train --whiten`; same meaning)", RkitWarning,
                      stacklevel=2)
    key = _ALIASES.get(key, key).replace("-", "_")
    if key in DEFAULT_SETTINGS or key in OPTIONAL_SETTINGS:
        return key
    head, dot, option = key.partition(".")
    head = _ALIASES.get(head, head)
    if dot and head in COMPONENT_AXES and option:
        return f"{head}.{option}"
    raise RkitError(
        f"unknown grid axis {name!r}: use one of {', '.join(DEFAULT_SETTINGS)}, or "
        f"COMPONENT.OPTION for an option of the chosen {', '.join(COMPONENT_AXES)} (e.g. pooling.p)"
    )


def parse_grid(items: Sequence[str] | Mapping[str, Sequence[Any] | Any]) -> dict[str, list[str]]:
    """``["pooling=mac,gem:p=4", "dim=32,64"]`` (or a mapping) -> ``{axis: [values]}``."""
    pairs: list[tuple[str, list[str]]] = []
    if isinstance(items, Mapping):
        for key, value in items.items():
            values = value if isinstance(value, (list, tuple)) else str(value).split(",")
            pairs.append((str(key), [str(v) for v in values]))
    else:
        for item in items:
            key, sep, value = str(item).partition("=")
            if not sep or not key.strip():
                raise RkitError(f"cannot read grid axis {item!r}: write AXIS=VALUE1,VALUE2 "
                                f"(e.g. --grid pooling=mac,spoc,gem)")
            pairs.append((key, value.split(",")))
    grid: dict[str, list[str]] = {}
    for key, values in pairs:
        axis = canonical_axis(key)
        cleaned = [v.strip() for v in values if v.strip()]
        if not cleaned:
            raise RkitError(f"grid axis {key!r} has no values: write {key}=VALUE1,VALUE2")
        grid.setdefault(axis, [])
        grid[axis] += [v for v in cleaned if v not in grid[axis]]
    return grid


def parse_dim(text: str) -> int | None:
    """``"128"`` -> 128; ``full`` (or ``none``) -> None (every dimension)."""
    if str(text).strip().lower() in _FULL_DIM:
        return None
    try:
        dim = int(str(text))
    except ValueError:
        raise RkitError(f"cannot read dim {text!r}: write a positive integer or 'full'") from None
    if dim < 1:
        raise RkitError(f"dim must be a positive integer or 'full', got {text!r}")
    return dim


def _canonical_spec(text: str) -> str:
    try:
        return str(ComponentSpec.parse(text))
    except RkitError:
        return text.strip()  # kept as written; the cell fails with the parse error when run


def _set_option(spec: str, option: str, value: str) -> str:
    parsed = ComponentSpec.parse(spec)
    options = dict(parsed.options)
    options[option] = value
    return str(ComponentSpec(parsed.name, options))


#: options a cell sets through another setting (``weights``, ``dim``): left out of a resolved
#: spec unless written in it
_SET_ELSEWHERE: dict[str, tuple[str, ...]] = {"backbone": ("weights",), "whitening": ("dim",)}


def _option_text(value: Any) -> str:
    return json.dumps(value) if value is None or isinstance(value, (bool, int, float)) else str(value)


def resolve_spec(kind: str, text: str) -> str:
    """``text`` with every option of its component written out: defaults filled in, values converted.

    ``rmac`` and ``rmac:levels=3`` (3 being the factory's default) resolve to the same text, as
    do ``gem:p=3`` and ``gem:p=3.0``; cells are keyed on resolved specs so such spellings are one
    cell and one extraction. A spec that cannot be resolved (unknown name, bad option) is
    returned as written: its cell fails with that error when it runs.
    """
    from .components import convert_value, validate_options
    from .plugins import get_host

    try:
        spec = ComponentSpec.parse(text)
        known = get_host().get(kind, spec.name).component.options()
        given = validate_options(spec.name, known, spec.options)
        defaults = {name: convert_value(spec.name, option, option.default) for name, option in known.items()
                    if not option.required and name not in _SET_ELSEWHERE.get(kind, ())}
    except RkitError:
        return _canonical_spec(text)
    values = {**defaults, **given}
    return str(ComponentSpec(spec.name, {k: _option_text(values[k]) for k in sorted(values)}))


def resolve_settings(settings: Mapping[str, str]) -> dict[str, str]:
    """``settings`` with component specs resolved (:func:`resolve_spec`) and numbers normalised."""
    from .extract import parse_scales

    resolved = dict(settings)
    for key, kind in COMPONENT_AXES.items():
        if key in resolved:
            resolved[key] = resolve_spec(kind, resolved[key])
    try:
        resolved["image_size"] = str(int(resolved["image_size"]))
        resolved["scales"] = "+".join(f"{s:g}" for s in parse_scales(resolved["scales"], separator="+"))
    except (RkitError, ValueError):
        pass  # kept as written: the cell fails with the parse error when it runs
    return resolved


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of the grid.

    Attributes:
        axes: the grid values that chose it, by axis (only the axes of the grid).
        settings: every effective setting (:data:`DEFAULT_SETTINGS` keys), as text.
        resolved: ``settings`` resolved against the components' defaults
            (:func:`resolve_settings`): what identifies the cell and its extraction.
    """

    axes: Mapping[str, str]
    settings: Mapping[str, str]
    resolved: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def extraction_key(self) -> tuple[str, ...]:
        source = self.resolved or self.settings
        return tuple(source[k] for k in EXTRACTION_KEYS)

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.axes.items()) or "base"


def _effective(base: Mapping[str, str], choice: Mapping[str, str]) -> dict[str, str]:
    settings = dict(base)
    options: list[tuple[str, str, str]] = []
    for axis, value in choice.items():
        if "." in axis:
            head, _, option = axis.partition(".")
            options.append((head, option, value))
        else:
            settings[axis] = value
    for head, option, value in options:
        try:
            settings[head] = _set_option(settings[head], option, value)
        except RkitError:
            settings[head] = f"{settings[head]}:{option}={value}"
    for key in COMPONENT_AXES:
        settings[key] = _canonical_spec(settings[key])
    if settings["whiten"].split(":")[0].strip().lower() == "none":
        settings["dim"] = "full"  # the identity keeps every dimension: dim does not apply
    settings["dim"] = "full" if settings["dim"].strip().lower() in _FULL_DIM else settings["dim"].strip()
    for key, default in OPTIONAL_SETTINGS.items():
        if settings.get(key, default).strip().lower() in ("", default):
            settings.pop(key, None)
    return settings


def expand_grid(base: Mapping[str, str], grid: Mapping[str, Sequence[str]]) -> list[Cell]:
    """Every combination of the grid's values over ``base`` settings, duplicates removed.

    Cells come out in grid order (the last axis varies fastest). Two choices with the same
    resolved settings (e.g. ``whiten=none`` with different ``dim``, or ``rmac`` and
    ``rmac:levels=3`` when 3 is the default) are one cell.
    """
    unknown = set(base) - set(DEFAULT_SETTINGS) - set(OPTIONAL_SETTINGS)
    if unknown:
        raise RkitError(f"unknown setting(s) {', '.join(sorted(unknown))}: use {', '.join(DEFAULT_SETTINGS)}")
    full_base = {**DEFAULT_SETTINGS, **{k: str(v) for k, v in base.items() if v is not None}}
    axes = list(grid)
    cells: list[Cell] = []
    seen: set[tuple[tuple[str, str], ...]] = set()
    for values in itertools.product(*(grid[a] for a in axes)):
        choice = dict(zip(axes, values))
        settings = _effective(full_base, choice)
        resolved = resolve_settings(settings)
        key = tuple(sorted(resolved.items()))
        if key in seen:
            continue
        seen.add(key)
        shown = {a: (settings["dim"] if a == "dim" else v) for a, v in choice.items()}
        cells.append(Cell(shown, settings, resolved))
    return cells


# -- results ----------------------------------------------------------------------------------

@dataclasses.dataclass
class CellResult:
    """The outcome of one cell (what ``OUT/cells/<id>.json`` holds)."""

    cell_id: str
    axes: dict[str, str]
    settings: dict[str, str]
    status: str                       # "ok" or "failed"
    error: str | None = None
    map: float | None = None
    mp_at_k: dict[str, float | None] = dataclasses.field(default_factory=dict)
    per_class_ap: dict[str, float | None] = dataclasses.field(default_factory=dict)
    per_query_ap: list[float | None] = dataclasses.field(default_factory=list)
    out_dim: int | None = None
    group: str = ""
    whitening_protocol: str = ""
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    data_id: str = ""                 # which collections it was evaluated on (a hash)
    reused: bool = False              # read from a previous run
    earlier: bool = False             # from an earlier run's grid, not this one's

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("reused"), data.pop("earlier")
        return {"format": "rkit-ablation-cell", "version": ABLATION_FORMAT_VERSION, **data}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CellResult:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


@dataclasses.dataclass
class AblationResult:
    """All cells of a grid plus the work-sharing accounting."""

    out_dir: Path
    axes: list[str]
    cells: list[CellResult]
    stats: dict[str, Any]
    base: dict[str, str]
    grid: dict[str, list[str]]
    query_paths: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    data_root: str = ""
    #: cells of earlier runs into the same folder (same data) that this grid does not contain
    earlier: list[CellResult] = dataclasses.field(default_factory=list)

    @property
    def failed(self) -> list[CellResult]:
        return [c for c in self.cells if c.status != "ok"]

    @property
    def all_cells(self) -> list[CellResult]:
        """This grid's cells, then the earlier ones (what the results files list)."""
        return [*self.cells, *self.earlier]

    @property
    def all_axes(self) -> list[str]:
        """This grid's axes, then those only earlier cells vary."""
        extra = dict.fromkeys(a for c in self.earlier for a in c.axes if a not in self.axes)
        return [*self.axes, *extra]


def _round(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if not math.isfinite(value) else round(value, 6)


def _hash(data: Any, length: int = 12) -> str:
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:length]


def _error_text(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, RkitError) else f"{type(exc).__name__}: {exc}"


# -- evaluation of one cell -------------------------------------------------------------------

@dataclasses.dataclass
class _Collection:
    """Descriptors of one collection for one extraction key."""

    descriptors: np.ndarray
    paths: list[str]
    labels: list[str]
    seconds: float               # time the extraction took (when it was run)
    reused: bool


class WhiteningFits:
    """Fitted whitenings, learned once and shared by the dimensions of a grid.

    A whitening is ``psi = L2(P (f - m))`` with the rows of ``P`` ordered by decreasing
    importance, so the ``D``-dimensional whitening is the first ``D`` rows of the full one
    (docs/definitions.md §2, "keeping the first D rows"; :meth:`FittedWhitening.truncated`). With
    ``share=True`` each (descriptors, whitening, training subset) is therefore fitted once with
    every meaningful direction, stored as ``<folder>/<key>.npz``, and truncated for each
    ``dim``; asking for more dimensions than the fit has is the same error a direct fit gives.
    ``share=False`` fits every cell on its own (for a third-party whitening whose rows are not
    ordered that way).
    """

    def __init__(self, folder: Path | None = None, share: bool = True) -> None:
        self.folder = folder
        self.share = share
        self.memory: dict[str, Any] = {}
        self.fits_run = 0
        self.fits_reused = 0
        self.fit_seconds = 0.0

    def fitted(self, spec: str, dim: int | None, key: Mapping[str, Any], make_data: Callable[[], Any]) -> Any:
        """The whitening ``spec`` with output ``dim``, learned on ``make_data()`` (identified by ``key``).

        ``key["spec"]``, if given, identifies the whitening instead of ``spec`` as written (the
        resolved spec: two spellings of one whitening share a fit).
        """
        from .whitening import FittedWhitening, fit_whitening

        if not self.share:
            return self._fit(lambda: fit_whitening(spec, make_data(), dim))
        name = _hash({"spec": spec, **key}, 16)  # a "spec" in key wins
        full = self.memory.get(name)
        path = self.folder / f"{name}.npz" if self.folder is not None else None
        if full is None and path is not None and path.is_file():
            try:
                full = FittedWhitening.load(path)
                self.fits_reused += 1
            except RkitError:
                full = None
        elif full is not None:
            self.fits_reused += 1
        if full is None:
            full = self._fit(lambda: fit_whitening(spec, make_data(), None))
            if path is not None:
                full.save(path)
        self.memory[name] = full
        if dim is None:
            return full
        if dim > full.out_dim:
            raise RkitError(
                f"whitening {spec!r} learned on {full.meta.get('n_descriptors', 'these')} descriptors has "
                f"{full.out_dim} meaningful dimensions, fewer than dim={dim}: use dim {full.out_dim} or "
                f"less, or learn it on more images (--whiten-data)")
        return full.truncated(dim)

    def _fit(self, fit: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        fitted = fit()
        self.fit_seconds += time.perf_counter() - start
        self.fits_run += 1
        return fitted


def evaluate_cell(settings: Mapping[str, str], evaluation: _Collection, whitening_set: _Collection | None,
                  fits: WhiteningFits | None = None, fit_key: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Whiten (learned as the module docstring says), evaluate, and return the numbers.

    ``fits`` shares fitted whitenings between cells (``fit_key`` identifies the descriptors);
    by default every fit is made here. Returns a dict with ``map``, ``mp_at_k``,
    ``per_class_ap``, ``per_query_ap``, ``out_dim``, ``whitening_protocol`` and ``seconds``
    (``fit``, ``evaluate``).
    """
    from .evaluate import evaluate_folder_collection
    from .whitening import WhiteningData

    fits = fits if fits is not None else WhiteningFits(share=False)
    fit_key = dict(fit_key or {})
    fit_before = fits.fit_seconds
    spec, dim, x = settings["whiten"], parse_dim(settings["dim"]), evaluation.descriptors
    rerank = settings.get("rerank", OPTIONAL_SETTINGS["rerank"])
    if ComponentSpec.parse(spec).name != "none" and whitening_set is None:
        per_query, precision, out_dim, eval_s = _leave_one_class_out(spec, dim, evaluation, fits, fit_key, rerank)
        protocol = "leave-one-class-out"
    else:
        if ComponentSpec.parse(spec).name == "none":
            projected, protocol, out_dim = x, "none", x.shape[1]
        else:
            assert whitening_set is not None
            fitted = fits.fitted(spec, dim, {**fit_key, "train": "separate"},
                                 lambda: WhiteningData.from_labels(whitening_set.descriptors, whitening_set.labels))
            projected, protocol, out_dim = fitted.apply(x), "separate whitening set", fitted.out_dim
        start = time.perf_counter()
        result = evaluate_folder_collection(projected, evaluation.labels, names=evaluation.paths, rerank=rerank)
        eval_s = time.perf_counter() - start
        per_query, precision = result.per_query_ap, result.per_query_precision
    return {**_summarise(per_query, precision, np.asarray(evaluation.labels)),
            "out_dim": int(out_dim) if out_dim is not None else None, "whitening_protocol": protocol,
            "seconds": {"fit": round(fits.fit_seconds - fit_before, 3), "evaluate": round(eval_s, 3)}}


def _leave_one_class_out(spec: str, dim: int | None, evaluation: _Collection, fits: WhiteningFits,
                         fit_key: Mapping[str, Any], rerank: str = "none",
                         ) -> tuple[np.ndarray, dict[Any, np.ndarray], int | None, float]:
    """Per-query AP and precision, each class ranked with a whitening learned on the others."""
    from .evaluate import evaluate_folder_collection
    from .whitening import WhiteningData

    labels, x = np.asarray(evaluation.labels), evaluation.descriptors
    per_query = np.full(len(labels), np.nan)
    precision: dict[Any, np.ndarray] = {}
    out_dim, eval_s = None, 0.0
    for cls in sorted(set(labels.tolist())):
        held_out = labels == cls
        fitted = fits.fitted(spec, dim, {**fit_key, "train": f"all but {cls}"},
                             lambda: WhiteningData.from_labels(x[~held_out], labels[~held_out].tolist()))
        start = time.perf_counter()
        result = evaluate_folder_collection(fitted.apply(x), evaluation.labels, names=evaluation.paths,
                                            rerank=rerank)
        eval_s += time.perf_counter() - start
        per_query[held_out] = result.per_query_ap[held_out]
        for k, values in result.per_query_precision.items():
            precision.setdefault(k, np.full(len(labels), np.nan))[held_out] = values[held_out]
        out_dim = fitted.out_dim if out_dim is None else min(out_dim, fitted.out_dim)
    return per_query, precision, out_dim, eval_s


def _summarise(per_query: np.ndarray, precision: Mapping[Any, np.ndarray], labels: np.ndarray) -> dict[str, Any]:
    """mAP, mP@k, per-class and per-query AP of a cell (NaN queries left out of the means)."""
    def mean(values: np.ndarray) -> float | None:
        return _round(np.nanmean(values)) if np.isfinite(values).any() else None

    return {"map": mean(per_query),
            "mp_at_k": {str(k): mean(v) for k, v in precision.items()},
            "per_class_ap": {str(c): mean(per_query[labels == c]) for c in sorted(set(labels.tolist()))},
            "per_query_ap": [_round(v) for v in per_query]}


# -- running a grid ---------------------------------------------------------------------------

@dataclasses.dataclass
class AblationOptions:
    """How to run a grid (everything but the grid itself)."""

    data: Path
    out_dir: Path
    whiten_data: Path | None = None
    device: str = "auto"
    batch_size: int = 16
    num_workers: int = 2
    progress: bool = True
    share_whitening_fits: bool = True


def _labels_for(paths: Sequence[str]) -> list[str]:
    from .evaluate import folder_labels

    return folder_labels(paths)


def _model_key(settings: Mapping[str, str]) -> tuple[str, ...]:
    """The settings the network depends on: extraction groups that differ only in image size or
    scales share one model."""
    return (settings["backbone"], settings["weights"], settings["pooling"])


class _Extractor:
    """Extracts (or loads) one collection's descriptors for one extraction key."""

    def __init__(self, options: AblationOptions, echo: Callable[[str], None]) -> None:
        self.options = options
        self.echo = echo
        self.models: dict[tuple[str, ...], Any] = {}

    def collection(self, settings: Mapping[str, str], group: str, which: str, root: Path,
                   paths: list[str]) -> _Collection:
        from .extract import extract_descriptors, parse_scales
        from .model import ModelConfig, build_model

        target = self.options.out_dir / "descriptors" / f"{group}-{which}.npz"
        if target.is_file():
            stored = DescriptorSet.load(target)
            return _Collection(stored.descriptors, stored.paths, _labels_for(stored.paths),
                               float(stored.meta.get("seconds", 0.0)), True)
        key = _model_key(settings)
        if key not in self.models:
            self.models.clear()  # one model in memory at a time
            config = ModelConfig(backbone=settings["backbone"], pooling=settings["pooling"],
                                 weights=settings["weights"])
            self.models[key] = build_model(config).eval()
        image_size = int(settings["image_size"])
        result = extract_descriptors(
            self.models[key], paths, root=root, image_size=image_size,
            scales=parse_scales(settings["scales"], separator="+"), batch_size=self.options.batch_size,
            device=self.options.device, num_workers=self.options.num_workers,
            progress=self.options.progress, checkpoint=target.with_suffix(".partial"),
        )
        for path, reason in result.failed:
            self.echo(f"  skipped {path}: {reason}")
        if len(result.paths) < 2:
            raise RkitError(f"only {len(result.paths)} of the {len(paths)} images under {root} could be "
                            f"described: check the images (reasons above)")
        meta = {"settings": {k: settings[k] for k in EXTRACTION_KEYS}, "root": str(root),
                "seconds": round(result.seconds, 3), "failed": result.failed, "collection": which}
        DescriptorSet(result.descriptors, result.paths, meta).save(target)
        return _Collection(result.descriptors, result.paths, _labels_for(result.paths), result.seconds, False)


def _check_collection(root: Path, paths: list[str], what: str, option: str) -> None:
    labels = _labels_for(paths)
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    if len(counts) < 2 or max(counts.values()) < 2:
        raise RkitError(
            f"{what} {root} must be a folder-per-class collection (one sub-folder per landmark, at "
            f"least two classes and two images in some class); found {len(counts)} class(es): "
            f"point {option} to the folder that contains the class folders"
        )


@dataclasses.dataclass
class _Inputs:
    """The listed collections of a run and what identifies them (part of every cell id)."""

    eval_root: Path
    eval_paths: list[str]
    whiten_root: Path | None
    whiten_paths: list[str] | None
    identity: dict[str, Any]

    @property
    def data_id(self) -> str:
        return _hash(self.identity)


def _list_inputs(options: AblationOptions) -> _Inputs:
    from .extract import list_images

    eval_root, eval_paths = list_images(options.data)
    _check_collection(eval_root, eval_paths, "--data", "--data")
    whiten_root = whiten_paths = None
    if options.whiten_data is not None:
        whiten_root, whiten_paths = list_images(options.whiten_data)
        _check_collection(whiten_root, whiten_paths, "--whiten-data", "--whiten-data")
    identity = {
        "data": str(Path(eval_root).resolve()), "images": _hash(eval_paths, 16),
        "whiten_data": None if whiten_root is None else str(Path(whiten_root).resolve()),
        "whiten_images": None if whiten_paths is None else _hash(whiten_paths, 16),
    }
    return _Inputs(Path(eval_root), eval_paths, None if whiten_root is None else Path(whiten_root),
                   whiten_paths, identity)


def _extraction_groups(cells: Sequence[Cell]) -> dict[tuple[str, ...], list[Cell]]:
    """Cells by extraction key, groups of one model next to each other (each model built once)."""
    groups: dict[tuple[str, ...], list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.extraction_key, []).append(cell)
    first_of_model: dict[tuple[str, ...], int] = {}
    for members in groups.values():
        first_of_model.setdefault(_model_key(members[0].settings), len(first_of_model))
    return dict(sorted(groups.items(), key=lambda item: first_of_model[_model_key(item[1][0].settings)]))


def _new_stats(cells: int, groups: int) -> dict[str, Any]:
    return {"cells": cells, "cells_run": 0, "cells_reused": 0, "cells_failed": 0,
            "extraction_groups": groups, "extractions_run": 0, "extractions_reused": 0,
            "extractions_skipped": 0, "extraction_s": 0.0, "whitening_fit_s": 0.0, "evaluate_s": 0.0,
            "unshared_extraction_estimate_s": 0.0}


class _GridRun:
    """The state of one :func:`run_ablation`: results so far, accounting, progress bar."""

    def __init__(self, cells: list[Cell], inputs: _Inputs, options: AblationOptions,
                 echo: Callable[[str], None], bar: Any) -> None:
        self.cells, self.inputs, self.options, self.echo, self.bar = cells, inputs, options, echo, bar
        self.out = Path(options.out_dir)
        self.extractor = _Extractor(options, echo)
        self.fits = WhiteningFits(self.out / "whitenings", share=options.share_whitening_fits)
        self.results: dict[int, CellResult] = {}
        self.index_of = {id(cell): i for i, cell in enumerate(cells)}
        self.stats = _new_stats(len(cells), 0)
        self.query_paths: dict[str, list[str]] = {}

    def cell_id(self, cell: Cell) -> str:
        return _hash({"settings": dict(cell.resolved or cell.settings), **self.inputs.identity})

    def record(self, cell: Cell, outcome: CellResult, counter: str | None) -> None:
        self.results[self.index_of[id(cell)]] = outcome
        if counter:
            self.stats[counter] += 1
        self.bar.update(1)

    def run_group(self, key: tuple[str, ...], members: list[Cell]) -> None:
        """Reuse the group's finished cells; extract once for the others and evaluate them."""
        group = _hash({"extraction": dict(zip(EXTRACTION_KEYS, key)), **self.inputs.identity})
        pending = self.reuse_finished(members)
        if not pending:
            stored_paths = self.out / "descriptors" / f"{group}-eval.npz"
            if stored_paths.is_file():
                self.query_paths[group] = DescriptorSet.load(stored_paths).paths
            self.stats["extractions_skipped"] += 1
            self.stats["unshared_extraction_estimate_s"] += _group_seconds(self.out, group) * len(members)
            return
        collections = self.extract_group(members[0], group, pending)
        if collections is None:
            return
        evaluation, whitening_set, seconds = collections
        self.stats["unshared_extraction_estimate_s"] += seconds * len(members)
        for cell, cell_id in pending:
            self.evaluate(cell, cell_id, group, evaluation, whitening_set, seconds)

    def reuse_finished(self, members: list[Cell]) -> list[tuple[Cell, str]]:
        """Record the cells finished by an earlier run; return the others with their ids."""
        pending = []
        for cell in members:
            cell_id = self.cell_id(cell)
            stored = _read_cell(self.out / "cells" / f"{cell_id}.json")
            if stored is not None and stored.status == "ok":
                stored.reused, stored.axes, stored.settings = True, dict(cell.axes), dict(cell.settings)
                self.record(cell, stored, "cells_reused")
            else:
                pending.append((cell, cell_id))
        return pending

    def extract_group(self, first: Cell, group: str, pending: list[tuple[Cell, str]]
                      ) -> tuple[_Collection, _Collection | None, float] | None:
        """The group's collections (extracted or loaded); None, with its cells failed, on error."""
        inputs = self.inputs
        try:
            evaluation = self.extractor.collection(first.settings, group, "eval", inputs.eval_root, inputs.eval_paths)
            whitening_set = None
            if inputs.whiten_root is not None and inputs.whiten_paths is not None:
                whitening_set = self.extractor.collection(first.settings, group, "whiten",
                                                          inputs.whiten_root, inputs.whiten_paths)
        except Exception as exc:  # the whole group fails, the grid goes on
            label = " ".join(f"{k}={first.settings[k]}" for k in EXTRACTION_KEYS)
            message = f"extraction failed ({label}): {_error_text(exc)}"
            self.echo(f"FAILED {message}")
            for cell, cell_id in pending:
                failed = CellResult(cell_id, dict(cell.axes), dict(cell.settings), "failed", message, group=group,
                                    data_id=inputs.data_id)
                _write_cell(self.out, failed)
                self.record(cell, failed, "cells_failed")
            return None
        seconds = evaluation.seconds + (whitening_set.seconds if whitening_set else 0.0)
        if evaluation.reused and (whitening_set is None or whitening_set.reused):
            self.stats["extractions_reused"] += 1
        else:
            self.stats["extractions_run"] += 1
            self.stats["extraction_s"] += seconds
        self.query_paths[group] = evaluation.paths
        return evaluation, whitening_set, seconds

    def evaluate(self, cell: Cell, cell_id: str, group: str, evaluation: _Collection,
                 whitening_set: _Collection | None, group_seconds: float) -> None:
        """Evaluate one cell, store its result; a failure is recorded, not raised."""
        common = {"group": group, "data_id": self.inputs.data_id}
        try:
            numbers = evaluate_cell(cell.settings, evaluation, whitening_set, self.fits,
                                    {"group": group, "spec": cell.resolved.get("whiten", cell.settings["whiten"])})
            outcome = CellResult(cell_id, dict(cell.axes), dict(cell.settings), "ok", **common,
                                 **{k: v for k, v in numbers.items() if k != "seconds"},
                                 seconds={"extraction_of_group": round(group_seconds, 3), **numbers["seconds"]})
            self.stats["evaluate_s"] += numbers["seconds"]["evaluate"]
            counter = "cells_run"
        except Exception as exc:
            outcome = CellResult(cell_id, dict(cell.axes), dict(cell.settings), "failed", _error_text(exc), **common)
            counter = "cells_failed"
            self.echo(f"FAILED cell {cell.label()}: {outcome.error}")
        _write_cell(self.out, outcome)
        self.record(cell, outcome, counter)

    def finish(self, started: float, base: Mapping[str, str], grid: Mapping[str, Sequence[str]]) -> AblationResult:
        """The result of the run, with its accounting and the earlier cells of the folder."""
        stats = self.stats
        stats["whitening_fits_run"], stats["whitening_fits_reused"] = self.fits.fits_run, self.fits.fits_reused
        stats["whitening_fit_s"] = self.fits.fit_seconds  # including fits whose cells then failed
        stats["wall_s"] = round(time.perf_counter() - started, 3)
        for key in ("extraction_s", "whitening_fit_s", "evaluate_s", "unshared_extraction_estimate_s"):
            stats[key] = round(stats[key], 3)
        cells = [self.results[i] for i in range(len(self.cells))]
        earlier = _earlier_cells(self.out, self.inputs.data_id, {c.cell_id for c in cells})
        return AblationResult(self.out, list(grid), cells, stats,
                              {**DEFAULT_SETTINGS, **{k: str(v) for k, v in base.items()}},
                              {k: list(v) for k, v in grid.items()}, self.query_paths,
                              self.inputs.identity["data"], earlier)


def run_ablation(base: Mapping[str, str], grid: Mapping[str, Sequence[str]], options: AblationOptions,
                 echo: Callable[[str], None] | None = None) -> AblationResult:
    """Run (or resume) the grid; see the module docstring. Returns every cell's result.

    ``base`` holds the settings that the grid does not vary (missing ones take
    :data:`DEFAULT_SETTINGS`). Nothing but a problem with the inputs themselves raises: a
    cell that fails is recorded as failed. The results files also list the cells of earlier
    runs into the same folder (same data) that this grid does not contain.
    """
    from tqdm.auto import tqdm

    echo = echo or (lambda message: tqdm.write(message))
    started = time.perf_counter()
    out = Path(options.out_dir)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    inputs = _list_inputs(options)
    cells = expand_grid(base, grid)
    plan = {"format": "rkit-ablation", "version": ABLATION_FORMAT_VERSION, "base": dict(base),
            "grid": {k: list(v) for k, v in grid.items()}, "data": inputs.identity, "cells": len(cells)}
    write_text_atomic(out / "ablation.json", json.dumps(plan, indent=2) + "\n")
    groups = _extraction_groups(cells)
    with tqdm(total=len(cells), desc="ablation cells", unit="cell", disable=not options.progress) as bar:
        state = _GridRun(cells, inputs, options, echo, bar)
        state.stats["extraction_groups"] = len(groups)
        for key, members in groups.items():
            state.run_group(key, members)
    result = state.finish(started, base, grid)
    write_outputs(result)
    return result


def _group_seconds(out: Path, group: str) -> float:
    """Extraction time of a stored group (read from its descriptor files), 0 if none."""
    total = 0.0
    for which in ("eval", "whiten"):
        path = out / "descriptors" / f"{group}-{which}.npz"
        if path.is_file():
            try:
                total += float(DescriptorSet.load(path).meta.get("seconds", 0.0))
            except RkitError:
                pass
    return total


def _read_cell(path: Path) -> CellResult | None:
    if not path.is_file():
        return None
    try:
        return CellResult.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None  # unreadable: run the cell again


def _earlier_cells(out: Path, data_id: str, current: set[str]) -> list[CellResult]:
    """The cells stored in ``out/cells`` for the same data that are not in ``current``."""
    earlier = []
    for path in sorted((out / "cells").glob("*.json")):
        cell = _read_cell(path)
        if cell is not None and cell.data_id == data_id and cell.cell_id not in current:
            cell.reused = cell.earlier = True
            earlier.append(cell)
    return sorted(earlier, key=lambda c: json.dumps(c.settings, sort_keys=True))


def _write_cell(out: Path, cell: CellResult) -> None:
    write_text_atomic(out / "cells" / f"{cell.cell_id}.json", json.dumps(cell.to_json(), indent=1) + "\n")


# -- output -----------------------------------------------------------------------------------

def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def table_rows(result: AblationResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table (grid axes, numbers, status), earlier cells last."""
    axes = result.all_axes
    header = [*axes, "out dim", "mAP", *(f"mP@{k}" for k in TABLE_KS), "status"]
    rows = []
    for cell in result.all_cells:
        row = [cell.axes.get(a, cell.settings.get(a, "")) for a in axes]
        row.append("-" if cell.out_dim is None else str(cell.out_dim))
        row.append(_fmt(cell.map))
        row += [_fmt(cell.mp_at_k.get(str(k))) for k in TABLE_KS]
        status = cell.status if cell.status == "ok" else f"FAILED: {cell.error}"
        note = " (earlier run)" if cell.earlier else " (reused)" if cell.reused and cell.status == "ok" else ""
        row.append(status + note)
        rows.append(row)
    return header, rows


def format_table(result: AblationResult, max_error: int = 70) -> str:
    """A plain-text table for the terminal."""
    header, rows = table_rows(result)
    rows = [[c if len(c) <= max_error else c[: max_error - 3] + "..." for c in row] for row in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def format_markdown(result: AblationResult) -> str:
    """The table as GitHub Markdown (``|`` in values escaped)."""
    header, rows = table_rows(result)
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def format_csv(result: AblationResult) -> str:
    """One row per cell: every setting, the numbers, status and error."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["cell_id", *DEFAULT_SETTINGS, "out_dim", "map", *(f"mp@{k}" for k in TABLE_KS),
                     "status", "error", "whitening_protocol"])
    for cell in result.all_cells:
        writer.writerow([cell.cell_id, *(cell.settings.get(k, "") for k in DEFAULT_SETTINGS),
                         cell.out_dim if cell.out_dim is not None else "",
                         "" if cell.map is None else cell.map,
                         *("" if cell.mp_at_k.get(str(k)) is None else cell.mp_at_k[str(k)] for k in TABLE_KS),
                         cell.status, cell.error or "", cell.whitening_protocol])
    return buffer.getvalue()


def results_document(result: AblationResult) -> dict[str, Any]:
    """The ``results.json`` document (read back by :func:`load_ablation` and ``rkit report``)."""
    cells = []
    for cell in result.all_cells:
        data = cell.to_json()
        data.pop("format"), data.pop("version")
        data["reused"], data["earlier"] = cell.reused, cell.earlier
        cells.append(data)
    return {"format": "rkit-ablation-results", "version": ABLATION_FORMAT_VERSION,
            "axes": result.axes, "base": result.base, "grid": result.grid, "stats": result.stats,
            "data_root": result.data_root, "query_paths": result.query_paths, "cells": cells}


def write_outputs(result: AblationResult) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv`` and ``results.md`` into the output folder."""
    out = result.out_dir
    files = {"json": out / "results.json", "csv": out / "results.csv", "md": out / "results.md"}
    write_text_atomic(files["json"], json.dumps(results_document(result), indent=1) + "\n")
    write_text_atomic(files["csv"], format_csv(result))
    write_text_atomic(files["md"], format_markdown(result))
    return files


def _check_numbers(cell: CellResult, path: Path) -> None:
    """Every number of a cell read back is a number (or missing), else a clear error."""
    def is_number(value: Any) -> bool:
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))

    fields = {"map": [cell.map], "out_dim": [cell.out_dim], "mp_at_k": list(dict(cell.mp_at_k).values()),
              "per_class_ap": list(dict(cell.per_class_ap).values()), "per_query_ap": list(cell.per_query_ap),
              "seconds": list(dict(cell.seconds).values())}
    for name, values in fields.items():
        bad = next((v for v in values if not is_number(v)), None)
        if bad is not None:
            raise RkitError(f"{path}: cell {cell.cell_id} has {name} {json.dumps(bad)[:40]}, not a number: the "
                            f"results file is damaged or was edited; re-run `rkit ablate` with the same --out "
                            f"to write it again (finished cells are reused)")


def load_ablation(out_dir: str | Path) -> AblationResult:
    """Read an ablation output folder (its ``results.json``) back."""
    out = Path(out_dir)
    path = out / "results.json"
    if not path.is_file():
        raise RkitError(f"{out} holds no ablation results (results.json): run `rkit ablate --out {out}` first")
    try:
        doc = json.loads(path.read_text())
        cells = []
        for data in doc["cells"]:
            cell = CellResult.from_json(data)
            cell.reused, cell.earlier = bool(data.get("reused", False)), bool(data.get("earlier", False))
            _check_numbers(cell, path)
            cells.append(cell)
        return AblationResult(out, list(doc["axes"]), [c for c in cells if not c.earlier], dict(doc["stats"]),
                              dict(doc["base"]), dict(doc["grid"]), dict(doc.get("query_paths", {})),
                              str(doc.get("data_root", "")), [c for c in cells if c.earlier])
    except (ValueError, KeyError, TypeError) as exc:
        raise RkitError(f"{path} is not an ablation results file written by `rkit ablate` ({exc})") from exc
