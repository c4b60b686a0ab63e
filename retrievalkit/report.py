"""Self-contained HTML reports of an evaluation or an ablation (``rkit report``).

One static page, no external resources (no CDN, no fonts): thumbnails are JPEG ``data:`` URIs
(or, with ``link_images``, relative links to the original files), plots are matplotlib PNGs
embedded the same way, and a few lines of vanilla JavaScript make every table sortable by
clicking its header (numbers compare as numbers; click again to reverse).

* **Evaluation** (the rankings file of ``rkit eval --save-rankings``, format in
  :func:`retrievalkit.evaluate.rankings_document`): one row per query with its thumbnail, AP,
  precision at k, a small precision-recall curve and its top 10 marked correct (green),
  wrong (red) or junk (grey); above it a plot of the precision-recall curves (the mean, and the
  five worst queries) and a plot of the sorted per-query APs. The table opens sorted by AP,
  worst first.
* **Ablation** (an ``rkit ablate`` output folder): the results table, a bar chart of every
  cell's mAP, one line plot per grid axis, a per-class AP heatmap, and the queries with their AP
  in the best cell and across cells.

The pages are rendered from jinja2 templates with autoescaping (``retrievalkit/templates/``):
every text from a file (image names, settings, errors) is escaped. Labels drawn by matplotlib
have their ``$`` escaped, so a file name like ``price$5.jpg`` is not read as TeX. A rankings file
whose fields are not of the documented types is refused with the field named.

When the page has loaded, a script marks every ``img`` with ``data-loaded="1"`` (decoded, with
a width) or ``"0"`` and writes the counts to ``body[data-images-total|data-images-loaded]`` and
``body[data-plots-loaded]``; the browser test reads those back from the rendered DOM.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_text_atomic
from .errors import RkitError
from .outputs import check_output_path

#: Longest side of the thumbnails, in pixels.
THUMB_SIZE = 128
#: Ranked images shown per query.
TOP_SHOWN = 10
STATUS_CLASS = {"positive": "pos", "negative": "neg", "junk": "junk"}

#: What an ``img`` shows: None (unreadable), ``{"src": link}`` or ``{"thumb": key}``.
ImageRef = dict[str, str] | None


# -- images ------------------------------------------------------------------------------------

class ImageEmbedder:
    """Turns image paths into image refs: embedded thumbnails or relative links.

    Embedded thumbnails are stored once per image in a JSON block (:meth:`thumbs_json`) and
    ``img`` elements refer to them by key (``data-thumb``); the page's script sets their
    ``src``. (Repeating a data URI for every appearance of an image in the top-10 lists would
    make the page ten times larger.) With ``link_images`` the ``src`` is the image's path
    relative to the page. Unreadable images give ``None`` and are listed in :attr:`failed`
    (path, reason); the page shows a placeholder for them.
    """

    def __init__(self, out_file: Path, link_images: bool = False, size: int = THUMB_SIZE) -> None:
        self.out_dir = Path(out_file).resolve().parent
        self.link_images = link_images
        self.size = size
        self.cache: dict[Path, ImageRef] = {}
        self.thumbs: dict[str, str] = {}
        self.failed: list[tuple[str, str]] = []

    def ref(self, path: Path | None) -> ImageRef:
        """The image ref of ``path``; ``None`` if it cannot be read."""
        if path is None:
            return None
        path = Path(path)
        if path not in self.cache:
            self.cache[path] = self._make(path)
        return self.cache[path]

    def _make(self, path: Path) -> ImageRef:
        from .images import load_rgb

        if self.link_images:
            if not path.is_file():
                self.failed.append((str(path), "file not found"))
                return None
            return {"src": Path(os.path.relpath(path.resolve(), self.out_dir)).as_posix()}
        try:
            image = load_rgb(path)
        except RkitError as exc:
            self.failed.append((str(path), str(exc)))
            return None
        image.thumbnail((self.size, self.size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=80)
        key = f"t{len(self.thumbs)}"
        self.thumbs[key] = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        return {"thumb": key}

    def thumbs_json(self) -> str:
        """The thumbnails as JSON safe inside a ``script`` element (``</`` escaped)."""
        return json.dumps(self.thumbs).replace("</", "<\\/")


def _resolve(path: str, roots: Sequence[Path | None]) -> Path | None:
    """The first existing file among ``path`` itself and ``path`` under each root."""
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate
    for root in roots:
        if root is not None and (root / candidate).exists():
            return root / candidate
    first = next((r for r in roots if r is not None), None)
    return (first / candidate) if first is not None else candidate


# -- templates -----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("retrievalkit", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_page(template: str, title: str, embedder: ImageEmbedder, **context: Any) -> str:
    """Render ``template`` (in retrievalkit/templates/) as a complete page."""
    from markupsafe import Markup

    env = _environment()
    static = {name: Markup(env.loader.get_source(env, f"report.{name}")[0]) for name in ("css", "js")}
    return env.get_template(template).render(title=title, thumbs_json=Markup(embedder.thumbs_json()),
                                             **static, **context) + "\n"


def _cell(text: Any, sort: Any = None, cls: str | None = None, image: ImageRef = None,
          query: bool = False) -> dict[str, Any]:
    """One table cell for the templates' ``td`` macro."""
    return {"text": "" if text is None else str(text), "sort": None if sort is None else str(sort),
            "cls": cls, "image": image, "query": query}


def _num(value: float | None, digits: int = 3) -> tuple[str, str]:
    """(text, sort key) of a number that may be missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-", ""
    return f"{value:.{digits}f}", f"{value:.6f}"


def _num_cell(value: float | None, digits: int = 3) -> dict[str, Any]:
    text, key = _num(value, digits)
    return _cell(text, key, "num")


# -- plots -------------------------------------------------------------------------------------

def plain_label(text: Any) -> str:
    """``text`` for a matplotlib label: ``$`` escaped so it is never read as TeX math."""
    return str(text).replace("$", r"\$")


def _figure(fig: Any, caption: str) -> dict[str, str]:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return {"uri": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"),
            "caption": caption}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def precision_recall_curve(statuses: Sequence[str], n_positives: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each ranked image, junk removed (docs/definitions.md §5).

    ``n_positives`` is the query's number of positives; when unknown, recall is relative to
    the positives found in the ranked list given.
    """
    kept = np.array([s != "junk" for s in statuses], dtype=bool)
    hits = np.array([s == "positive" for s in statuses], dtype=bool)[kept]
    if hits.size == 0:
        return np.zeros(0), np.zeros(0)
    found = np.cumsum(hits)
    total = n_positives if n_positives else max(int(found[-1]), 1)
    precision = found / np.arange(1, hits.size + 1)
    recall = found / total
    return precision, recall


def _mean_interpolated_pr(curves: Sequence[tuple[np.ndarray, np.ndarray]],
                          grid: np.ndarray) -> np.ndarray:
    """Mean over queries of the interpolated precision (max precision at recall >= r)."""
    rows = []
    for precision, recall in curves:
        if recall.size == 0:
            continue
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        idx = np.searchsorted(recall, grid, side="left")
        rows.append(np.where(idx < recall.size, envelope[np.minimum(idx, recall.size - 1)], 0.0))
    return np.mean(rows, axis=0) if rows else np.zeros_like(grid)


def _pr_curve(precision: np.ndarray, recall: np.ndarray, width: int = 90, height: int = 48) -> dict[str, Any] | None:
    """The points of a row's tiny precision-recall curve (drawn as SVG by the template)."""
    if recall.size == 0:
        return None
    xs = np.concatenate([[0.0], recall])
    ys = np.concatenate([[precision[0]], precision])
    points = " ".join(f"{2 + x * (width - 4):.1f},{height - 2 - y * (height - 4):.1f}" for x, y in zip(xs, ys))
    return {"width": width, "height": height, "points": points}


# -- rankings files ---------------------------------------------------------------------------------

@dataclasses.dataclass
class ReportSummary:
    """What a report contains (returned by the writers, printed by the CLI)."""

    path: Path
    kind: str
    rows: int
    images: int
    images_failed: int
    plots: int


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _check_field(ok: bool, path: Path, where: str, value: Any, expected: str) -> None:
    if not ok:
        raise RkitError(f"{path}: {where} is {json.dumps(value)[:60]}, not {expected}: the rankings file is "
                        f"damaged or was edited; write it again with `rkit eval ... --save-rankings {path}`")


def _check_numbers(values: Any, path: Path, where: str) -> None:
    """An object whose every value is a number (precision / mP at each k)."""
    _check_field(isinstance(values, dict), path, where, values, "an object")
    for k, value in values.items():
        _check_field(_is_number(value), path, f"{where}.{k}", value, "a number")


def _check_query(entry: Any, path: Path, where: str) -> None:
    _check_field(isinstance(entry, dict), path, where, entry, "an object")
    _check_field(isinstance(entry.get("query"), str), path, f"{where}.query", entry.get("query"), "a path")
    _check_field(_is_number(entry.get("ap")), path, f"{where}.ap", entry.get("ap"), "a number")
    n_pos = entry.get("n_positives")
    _check_field(n_pos is None or (isinstance(n_pos, int) and not isinstance(n_pos, bool)), path,
                 f"{where}.n_positives", n_pos, "a whole number")
    _check_numbers(entry.get("precision") or {}, path, f"{where}.precision")
    top = entry.get("top", [])
    _check_field(isinstance(top, list), path, f"{where}.top", top, "a list")
    for i, item in enumerate(top):
        at = f"{where}.top[{i}]"
        _check_field(isinstance(item, dict) and isinstance(item.get("path"), str), path, at, item,
                     "an object with a path")
        _check_field(isinstance(item.get("status", ""), str), path, f"{at}.status", item.get("status"), "a status")
        _check_field(_is_number(item.get("score")), path, f"{at}.score", item.get("score"), "a number")


def _check_rankings(doc: dict[str, Any], path: Path) -> None:
    """Every field the report reads has the type docs/evaluation.md gives it, or a clear error."""
    for name, block in doc["settings"].items():
        where = f"settings.{name}"
        _check_field(isinstance(block, dict), path, where, block, "an object")
        _check_field(_is_number(block.get("map")), path, f"{where}.map", block.get("map"), "a number")
        _check_numbers(block.get("mp_at_k") or {}, path, f"{where}.mp_at_k")
        queries = block.get("queries", [])
        _check_field(isinstance(queries, list), path, f"{where}.queries", queries, "a list")
        for q, entry in enumerate(queries):
            _check_query(entry, path, f"{where}.queries[{q}]")


def load_rankings(path: str | Path) -> dict[str, Any]:
    """Read a rankings file written by ``rkit eval --save-rankings`` and check its format."""
    path = Path(path)
    if not path.is_file():
        raise RkitError(f"rankings file {path} does not exist: write it with `rkit eval ... --save-rankings {path}`")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise RkitError(f"{path} is not a JSON rankings file ({exc}): write it with `rkit eval --save-rankings`") from exc
    if not isinstance(doc, dict) or doc.get("format") != "rkit-rankings" or not isinstance(doc.get("settings"), dict) \
            or not doc["settings"]:
        raise RkitError(f"{path} is not a rankings file of `rkit eval --save-rankings` "
                        f"(no format 'rkit-rankings' with settings)")
    _check_rankings(doc, path)
    return doc


# -- evaluation reports ----------------------------------------------------------------------------

def _query_row(q: int, entry: dict[str, Any], ks: list[str], embedder: ImageEmbedder,
               query_roots: list[Path | None], db_roots: list[Path | None]) -> dict[str, Any]:
    """One query's row: thumbnail, AP, precisions, curve and its top images."""
    query = _cell(entry["query"], entry["query"], "query", embedder.ref(_resolve(entry["query"], query_roots)),
                  query=True)
    top = entry.get("top", [])
    precision, recall = precision_recall_curve([t.get("status", "negative") for t in top], entry.get("n_positives"))
    ap = entry.get("ap")
    shown = []
    for rank, item in enumerate(top[:TOP_SHOWN], start=1):
        status, score = item.get("status", "negative"), item.get("score")
        shown.append({"cls": STATUS_CLASS.get(status, "neg"), "path": item["path"], "rank": rank,
                      "image": embedder.ref(_resolve(item["path"], db_roots)),
                      "title": f"#{rank} {item['path']} ({status}{'' if score is None else f', score {score:.3f}'})"})
    text, key = _num(ap)
    return {"index": q + 1, "bad": ap is not None and ap < 0.5, "ap": {"text": text, "sort": key},
            "query": query,
            "precision": [_num_cell((entry.get("precision") or {}).get(k)) for k in ks],
            "curve": _pr_curve(precision, recall), "top": shown, "pr": (precision, recall)}


def _evaluation_plots(rows: list[dict[str, Any]], entries: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The precision-recall plot (mean and 5 worst queries) and the sorted per-query APs."""
    valid = [(e["ap"], r["pr"], e) for r, e in zip(rows, entries) if e.get("ap") is not None]
    if not valid:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    grid = np.linspace(0, 1, 101)
    for a, (p, r), e in sorted(valid, key=lambda t: t[0])[:5]:
        if r.size:
            ax.step(np.concatenate([[0], r]), np.concatenate([[p[0]], p]), where="post", lw=1,
                    alpha=0.8, label=plain_label(f"AP {a:.2f} {Path(e['query']).name[:28]}"))
    ax.plot(grid, _mean_interpolated_pr([c for _, c, _ in valid], grid), color="black", lw=2.5,
            label="mean (interpolated)")
    of_top = "" if all(e.get("n_positives") for _, _, e in valid) else \
        f" (of positives in the top {max(len(e.get('top', [])) for e in entries)})"
    ax.set(xlabel="recall" + of_top, ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.05),
           title="Precision-recall: mean and the 5 worst queries")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    plots = [_figure(fig, "precision-recall curves")]

    fig, ax = plt.subplots(figsize=(6, 4.2))
    sorted_aps = np.sort([a for a, _, _ in valid])
    ax.bar(np.arange(len(sorted_aps)), sorted_aps, width=1.0,
           color=["#c62828" if a < 0.5 else "#2e7d32" for a in sorted_aps])
    ax.axhline(float(np.mean(sorted_aps)), color="black", lw=1, ls="--", label=f"mAP {float(np.mean(sorted_aps)):.3f}")
    ax.set(xlabel="queries, worst to best", ylabel="AP", ylim=(0, 1.02), title="Per-query AP")
    ax.legend(loc="lower right")
    return plots + [_figure(fig, "per-query average precision, sorted")]


def _worst(entries: list[dict[str, Any]], count: int | None) -> list[dict[str, Any]]:
    """The ``count`` queries of lowest AP, in file order (all of them when ``count`` is None)."""
    if count is None:
        return entries
    order = sorted(range(len(entries)), key=lambda i: (entries[i].get("ap") is None, entries[i].get("ap") or 0.0))
    return [entries[i] for i in sorted(order[:count])]


def _image_roots(doc: dict[str, Any], rankings_file: Path, images_root: str | Path | None
                 ) -> tuple[list[Path | None], list[Path | None]]:
    """Where the query and database image paths of a rankings file are looked up, in order."""
    base = rankings_file.resolve().parent
    given = Path(images_root) if images_root is not None else None

    def root_of(key: str) -> Path | None:
        value = doc.get(key)
        if value is None:
            return None
        value = Path(value)
        return value if value.is_absolute() or value.exists() else base / value

    return [given, root_of("query_root"), root_of("root"), base], [given, root_of("root"), base]


def write_evaluation_report(rankings_file: str | Path, out_file: str | Path, *, setting: str | None = None,
                            images_root: str | Path | None = None, link_images: bool = False,
                            title: str | None = None, max_queries: int | None = None) -> ReportSummary:
    """Write the HTML report of a rankings file; see the module docstring."""
    rankings_file, out_file = Path(rankings_file), Path(out_file)
    doc = load_rankings(rankings_file)
    settings = doc["settings"]
    name = setting or doc.get("primary") or next(iter(settings))
    if name not in settings:
        raise RkitError(f"setting {name!r} is not in {rankings_file}; it has: {', '.join(settings)}")
    block = settings[name]
    entries = _worst(list(block.get("queries", [])), max_queries)
    query_roots, db_roots = _image_roots(doc, rankings_file, images_root)
    embedder = ImageEmbedder(out_file, link_images)
    ks = list(block.get("mp_at_k", {}))
    rows = [_query_row(q, e, ks, embedder, query_roots, db_roots) for q, e in enumerate(entries)]
    plots = _evaluation_plots(rows, entries)
    page_title = title or f"Retrieval report: {rankings_file.name}"
    page = render_page(
        "evaluation.html.j2", page_title, embedder, protocol=doc.get("protocol", "?"), setting=name,
        other_settings=[s for s in settings if s != name], map_text=_num(block.get("map"))[0],
        mp_text=" ".join(f"mP@{k} {_num(v)[0]}" for k, v in block.get("mp_at_k", {}).items()),
        source=str(rankings_file), plots=plots, ks=ks, top_shown=TOP_SHOWN, rows=rows, failed=embedder.failed)
    write_text_atomic(out_file, page)
    return ReportSummary(out_file, "evaluation", len(rows), len(embedder.cache), len(embedder.failed), len(plots))


# -- ablation reports -------------------------------------------------------------------------------

def _cell_label(axes: list[str]) -> Callable[[Any], str]:
    return lambda cell: " ".join(f"{a}={cell.axes.get(a, cell.settings.get(a, ''))}" for a in axes)


def _axis_plot(plt: Any, ok: list[Any], axes: list[str], axis: str) -> dict[str, str] | None:
    """mAP along ``axis``, one line per combination of the other axes; None if nothing varies."""
    others = [a for a in axes if a != axis]
    values = list(dict.fromkeys(c.axes.get(axis, "") for c in ok))
    lines: dict[str, dict[str, float]] = {}
    for c in ok:
        key = " ".join(f"{a}={c.axes.get(a, '')}" for a in others) or "mAP"
        lines.setdefault(key, {})[c.axes.get(axis, "")] = c.map
    if len(values) < 2 or len(lines) > 12 or all(len(points) < 2 for points in lines.values()):
        return None  # nothing to compare along this axis
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, points in lines.items():
        xs = [i for i, v in enumerate(values) if v in points]
        ax.plot(xs, [points[values[i]] for i in xs], marker="o", label=plain_label(key))
    ax.set_xticks(range(len(values)), [plain_label(v) for v in values])
    ax.set(xlabel=plain_label(axis), ylabel="mAP", title=plain_label(f"mAP by {axis}"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _figure(fig, f"mAP by {axis}")


def _ablation_plots(ok: list[Any], axes: list[str]) -> list[dict[str, str]]:
    """Bar chart of every cell's mAP, one plot per axis, the per-class AP heatmap."""
    if not ok:
        return []
    plt, label = _pyplot(), _cell_label(axes)
    ranked = sorted(ok, key=lambda c: c.map)
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(ranked) + 1.2))
    ax.barh(np.arange(len(ranked)), [c.map for c in ranked], color="#1565c0")
    ax.set_yticks(np.arange(len(ranked)), [plain_label(label(c)) for c in ranked], fontsize=7)
    for i, c in enumerate(ranked):
        ax.text(c.map, i, f" {c.map:.3f}", va="center", fontsize=7)
    ax.set(xlabel="mAP", xlim=(0, 1.08), title="mAP of every cell")
    plots = [_figure(fig, "mAP per cell")]
    plots += [p for p in (_axis_plot(plt, ok, axes, axis) for axis in axes) if p is not None]
    classes = sorted({k for c in ok for k in c.per_class_ap})
    if classes:
        matrix = np.array([[np.nan if c.per_class_ap.get(k) is None else c.per_class_ap[k] for k in classes]
                           for c in ok], dtype=float)
        fig, ax = plt.subplots(figsize=(0.6 * len(classes) + 3, 0.3 * len(ok) + 1.8))
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(classes)), [plain_label(k) for k in classes], rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(ok)), [plain_label(label(c)) for c in ok], fontsize=7)
        fig.colorbar(image, ax=ax, label="mean AP of the class's queries")
        ax.set_title("AP per class and cell")
        plots.append(_figure(fig, "per-class AP heatmap"))
    return plots


def _cells_table(cells: list[Any], axes: list[str]) -> tuple[list[str], list[list[dict[str, Any]]]]:
    """Header and cells of the ablation results table."""
    from .ablate import TABLE_KS

    header = [*axes, "out dim", "mAP", *(f"mP@{k}" for k in TABLE_KS), "status", "whitening learned",
              "fit s", "eval s"]
    rows = []
    for c in cells:
        row = [_cell(c.axes.get(a, c.settings.get(a, "")), c.axes.get(a, c.settings.get(a, ""))) for a in axes]
        row.append(_cell(c.out_dim, "" if c.out_dim is None else c.out_dim, "num"))
        row += [_num_cell(v) for v in [c.map, *(c.mp_at_k.get(str(k)) for k in TABLE_KS)]]
        status = "ok" if c.status == "ok" else f"FAILED: {c.error}"
        row.append(_cell(status + (" (earlier run)" if getattr(c, "earlier", False) else ""),
                         cls="" if c.status == "ok" else "failed"))
        row.append(_cell(c.whitening_protocol))
        row += [_num_cell(c.seconds.get(key), 2) for key in ("fit", "evaluate")]
        rows.append(row)
    return header, rows


def _queries_table(result: Any, ok: list[Any], axes: list[str], embedder: ImageEmbedder,
                   data_root: Path | None) -> dict[str, Any] | None:
    """Each query's AP in the best cell, mean and lowest over the cells that ranked it."""
    best = max(ok, key=lambda c: c.map) if ok else None
    if best is None or best.group not in result.query_paths:
        return None
    paths = result.query_paths[best.group]
    same = [c for c in ok if c.group == best.group or len(c.per_query_ap) == len(paths)]
    rows = []
    for i, path in enumerate(paths):
        values = [c.per_query_ap[i] for c in same if i < len(c.per_query_ap) and c.per_query_ap[i] is not None]
        best_ap = best.per_query_ap[i] if i < len(best.per_query_ap) else None
        folder = Path(path).parent.name
        rows.append([_cell(path, path, "query", embedder.ref(_resolve(path, [data_root])), query=True),
                     _cell(folder, folder), _num_cell(best_ap),
                     _num_cell(float(np.mean(values)) if values else None),
                     _num_cell(float(np.min(values)) if values else None)])
    return {"best": _cell_label(axes)(best), "cells": len(same), "rows": rows}


def write_ablation_report(ablation_dir: str | Path, out_file: str | Path, *, images_root: str | Path | None = None,
                          link_images: bool = False, title: str | None = None) -> ReportSummary:
    """Write the HTML report of an ``rkit ablate`` output folder; see the module docstring."""
    from .ablate import DEFAULT_SETTINGS, load_ablation

    ablation_dir, out_file = Path(ablation_dir), Path(out_file)
    result = load_ablation(ablation_dir)
    embedder = ImageEmbedder(out_file, link_images)
    data_root = Path(images_root) if images_root is not None else Path(result.data_root) if result.data_root else None
    cells, axes = result.all_cells, result.all_axes or ["pooling"]
    ok = [c for c in cells if c.status == "ok" and c.map is not None]
    plots = _ablation_plots(ok, axes)
    header, rows = _cells_table(cells, axes)
    queries = _queries_table(result, ok, axes, embedder, data_root)
    s = result.stats
    fixed = ", ".join(f"{k}={v}" for k, v in result.base.items() if k not in axes and k in DEFAULT_SETTINGS)
    failed = sum(c.status != "ok" for c in cells)
    summary = (f"{len(cells)} cells ({len(ok)} ok, {failed} failed); fixed: {fixed}. "
               f"Extractions for {s.get('extraction_groups', 0)} groups: {s.get('extractions_run', 0)} run "
               f"({s.get('extraction_s', 0):.1f} s; without sharing about {s.get('unshared_extraction_estimate_s', 0):.1f} s), "
               f"{s.get('extractions_reused', 0) + s.get('extractions_skipped', 0)} reused from an earlier run; "
               f"wall time {s.get('wall_s', 0):.1f} s.")
    page = render_page("ablation.html.j2", title or f"Ablation report: {ablation_dir.name}", embedder,
                       summary=summary, source=str(ablation_dir), plots=plots, header=header, rows=rows,
                       queries=queries, failed=embedder.failed)
    write_text_atomic(out_file, page)
    return ReportSummary(out_file, "ablation", len(cells), len(embedder.cache), len(embedder.failed), len(plots))


def write_report(source: str | Path, out_file: str | Path | None = None, **options: Any) -> ReportSummary:
    """An ablation report for a folder, an evaluation report for a rankings file.

    The page may not replace the rankings file or land inside the images folder
    (:func:`retrievalkit.outputs.check_output_path`).
    """
    source = Path(source)
    images_root = options.get("images_root")
    if source.is_dir():
        target = Path(out_file) if out_file is not None else source / "report.html"
        check_output_path(target, [source / "results.json", images_root])
        options.pop("setting", None), options.pop("max_queries", None)
        return write_ablation_report(source, target, **options)
    if source.is_file():
        target = Path(out_file) if out_file is not None else source.with_suffix(".html")
        check_output_path(target, [source, images_root])
        return write_evaluation_report(source, target, **options)
    raise RkitError(f"{source} does not exist: give the rankings file of `rkit eval --save-rankings FILE` "
                    f"or the output folder of `rkit ablate --out DIR`")
