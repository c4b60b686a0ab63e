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

When the page has loaded, a script marks every ``img`` with ``data-loaded="1"`` (decoded, with
a width) or ``"0"`` and writes the counts to ``body[data-images-total|data-images-loaded]`` and
``body[data-plots-loaded]``; the browser test reads those back from the rendered DOM.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_text_atomic
from .errors import RkitError

#: Longest side of the thumbnails, in pixels.
THUMB_SIZE = 128
#: Ranked images shown per query.
TOP_SHOWN = 10
_INITIAL_DESC = ' data-initial-sort="-1"'
STATUS_CLASS = {"positive": "pos", "negative": "neg", "junk": "junk"}


# -- images ------------------------------------------------------------------------------------

class ImageEmbedder:
    """Turns image paths into ``img`` attributes: embedded thumbnails or relative links.

    Embedded thumbnails are stored once per image in a JSON block (:meth:`script_block`) and
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
        self.cache: dict[Path, str | None] = {}
        self.thumbs: dict[str, str] = {}
        self.failed: list[tuple[str, str]] = []

    def attribute(self, path: Path | None) -> str | None:
        """``src="..."`` or ``data-thumb="KEY"`` for ``path``; ``None`` if it cannot be read."""
        if path is None:
            return None
        path = Path(path)
        if path not in self.cache:
            self.cache[path] = self._make(path)
        return self.cache[path]

    def _make(self, path: Path) -> str | None:
        from .images import load_rgb

        if self.link_images:
            if not path.is_file():
                self.failed.append((str(path), "file not found"))
                return None
            return f'src="{_e(Path(os.path.relpath(path.resolve(), self.out_dir)).as_posix())}"'
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
        return f'data-thumb="{key}"'

    def script_block(self) -> str:
        """The thumbnails as a JSON data block, for the page's script."""
        data = json.dumps(self.thumbs).replace("</", "<\\/")
        return f'<script type="application/json" id="thumbs">{data}</script>'


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


# -- plots -------------------------------------------------------------------------------------

def _figure_uri(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


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


def _pr_svg(precision: np.ndarray, recall: np.ndarray, width: int = 90, height: int = 48) -> str:
    """A tiny inline SVG precision-recall curve for a table row."""
    if recall.size == 0:
        return ""
    xs = np.concatenate([[0.0], recall])
    ys = np.concatenate([[precision[0]], precision])
    points = " ".join(f"{2 + x * (width - 4):.1f},{height - 2 - y * (height - 4):.1f}" for x, y in zip(xs, ys))
    return (f'<svg class="pr" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="precision-recall curve"><rect x="0.5" y="0.5" width="{width - 1}" '
            f'height="{height - 1}" fill="none" stroke="#ccc"/><polyline fill="none" stroke="#1565c0" '
            f'stroke-width="1.5" points="{points}"/></svg>')


# -- HTML scaffolding ----------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.6em}
.meta{color:#555;font-size:.9em} .plots{display:flex;flex-wrap:wrap;gap:1em}
.plots figure{margin:0} .plots img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555}
table{border-collapse:collapse;font-size:.85em;margin-top:.5em}
th,td{border:1px solid #ddd;padding:3px 6px;vertical-align:middle;text-align:left}
th{background:#f3f3f3;cursor:pointer;user-select:none;position:sticky;top:0}
th.sorted-asc::after{content:" \\25B2"} th.sorted-desc::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.thumb{height:64px;border:3px solid transparent;border-radius:2px;display:block}
.query .thumb{height:80px;border-color:#1565c0}
.pos .thumb{border-color:#2e7d32} .neg .thumb{border-color:#c62828} .junk .thumb{border-color:#9e9e9e}
.top{display:flex;flex-wrap:wrap;gap:3px;max-width:900px} .top figure{margin:0;text-align:center;font-size:.7em}
.top .thumb{height:56px} td.query div{max-width:220px;word-break:break-all;font-size:.85em}
.missing{width:64px;height:64px;background:#eee;color:#999;font-size:.7em;display:flex;
 align-items:center;justify-content:center;border:3px solid #bbb}
.failed{color:#c62828} .legend span{padding:0 .4em;border-left:6px solid} .bad{background:#fff3f3}
"""

_JS = """
(function(){
  var thumbs=JSON.parse(document.getElementById('thumbs').textContent);
  document.querySelectorAll('img[data-thumb]').forEach(function(img){img.src=thumbs[img.getAttribute('data-thumb')];});
  function key(cell){var v=cell.getAttribute('data-sort');if(v===null)v=cell.textContent.trim();
    var n=parseFloat(v);return (v!==''&&!isNaN(n)&&isFinite(v))?{n:n}:{s:v.toLowerCase()};}
  function cmp(a,b){if(a.n!==undefined&&b.n!==undefined)return a.n-b.n;
    if(a.n!==undefined)return -1;if(b.n!==undefined)return 1;return a.s<b.s?-1:a.s>b.s?1:0;}
  function sortBy(th,dir){var table=th.closest('table'),body=table.tBodies[0],i=th.cellIndex;
    var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(r1,r2){var a=key(r1.cells[i]),b=key(r2.cells[i]),ea=a.s==='',eb=b.s==='';
      if(ea||eb)return ea===eb?0:(ea?1:-1);return dir*cmp(a,b);});  /* empty cells last either way */
    rows.forEach(function(r){body.appendChild(r);});
    Array.prototype.forEach.call(table.tHead.rows[0].cells,function(c){c.classList.remove('sorted-asc','sorted-desc');});
    th.classList.add(dir>0?'sorted-asc':'sorted-desc');th.setAttribute('data-dir',dir);}
  document.querySelectorAll('table.sortable th').forEach(function(th){
    th.title='click to sort';
    th.addEventListener('click',function(){sortBy(th,th.getAttribute('data-dir')==='1'?-1:1);});
    if(th.hasAttribute('data-initial-sort'))sortBy(th,parseInt(th.getAttribute('data-initial-sort'),10));});
  function mark(){var imgs=document.images,ok=0,plots=0;
    for(var i=0;i<imgs.length;i++){var good=imgs[i].complete&&imgs[i].naturalWidth>0;
      imgs[i].setAttribute('data-loaded',good?'1':'0');if(good){ok++;if(imgs[i].classList.contains('plot'))plots++;}}
    document.body.setAttribute('data-images-total',imgs.length);
    document.body.setAttribute('data-images-loaded',ok);
    document.body.setAttribute('data-plots-loaded',plots);}
  if(document.readyState==='complete')mark();else window.addEventListener('load',mark);
})();
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, digits: int = 3) -> tuple[str, str]:
    """(text, sort key) of a number that may be missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-", ""
    return f"{value:.{digits}f}", f"{value:.6f}"


def _img(attribute: str | None, alt: str, cls: str = "thumb", title: str = "") -> str:
    """An ``img`` with the attribute of :meth:`ImageEmbedder.attribute`, or a placeholder."""
    if attribute is None:
        return f'<div class="missing" title="{_e(title or alt)}">unreadable</div>'
    return f'<img class="{cls}" {attribute} alt="{_e(alt)}" title="{_e(title or alt)}">'


def _page(title: str, body: str, embedder: ImageEmbedder) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n'
            f'{embedder.script_block()}\n<script>{_JS}</script>\n</body></html>\n')


def _plot_html(uri: str, caption: str) -> str:
    return f'<figure><img class="plot" src="{uri}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'


def _failed_html(embedder: ImageEmbedder) -> str:
    if not embedder.failed:
        return ""
    items = "".join(f"<li>{_e(p)}: {_e(r)}</li>" for p, r in embedder.failed[:50])
    more = f"<li>... and {len(embedder.failed) - 50} more</li>" if len(embedder.failed) > 50 else ""
    return (f'<h2 class="failed">{len(embedder.failed)} image(s) could not be shown</h2>'
            f"<ul>{items}{more}</ul>")


# -- evaluation reports ----------------------------------------------------------------------------

@dataclasses.dataclass
class ReportSummary:
    """What a report contains (returned by the writers, printed by the CLI)."""

    path: Path
    kind: str
    rows: int
    images: int
    images_failed: int
    plots: int


def load_rankings(path: str | Path) -> dict[str, Any]:
    """Read a rankings file written by ``rkit eval --save-rankings`` and check its format."""
    path = Path(path)
    if not path.is_file():
        raise RkitError(f"rankings file {path} does not exist: write it with `rkit eval ... --save-rankings {path}`")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise RkitError(f"{path} is not a JSON rankings file ({exc}): write it with `rkit eval --save-rankings`") from exc
    if not isinstance(doc, dict) or doc.get("format") != "rkit-rankings" or not doc.get("settings"):
        raise RkitError(f"{path} is not a rankings file of `rkit eval --save-rankings` "
                        f"(no format 'rkit-rankings' with settings)")
    return doc


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
    entries = list(block.get("queries", []))
    if max_queries is not None:
        order = sorted(range(len(entries)), key=lambda i: (entries[i].get("ap") is None, entries[i].get("ap") or 0.0))
        entries = [entries[i] for i in sorted(order[:max_queries])]
    base = rankings_file.resolve().parent
    given = Path(images_root) if images_root is not None else None

    def root_of(key: str) -> Path | None:
        value = doc.get(key)
        if value is None:
            return None
        value = Path(value)
        return value if value.is_absolute() or value.exists() else base / value

    query_roots = [given, root_of("query_root"), root_of("root"), base]
    db_roots = [given, root_of("root"), base]
    embedder = ImageEmbedder(out_file, link_images)
    plt = _pyplot()

    curves, aps, rows = [], [], []
    ks = list(block.get("mp_at_k", {}))
    for q, entry in enumerate(entries):
        top = entry.get("top", [])
        statuses = [t.get("status", "negative") for t in top]
        n_pos = entry.get("n_positives")
        precision, recall = precision_recall_curve(statuses, n_pos)
        curves.append((precision, recall))
        ap = entry.get("ap")
        aps.append(ap)
        ap_text, ap_key = _num(ap)
        q_src = embedder.attribute(_resolve(entry["query"], query_roots))
        shown = []
        for rank, item in enumerate(top[:TOP_SHOWN], start=1):
            status = item.get("status", "negative")
            score = item.get("score")
            tip = f"#{rank} {item['path']} ({status}{'' if score is None else f', score {score:.3f}'})"
            src = embedder.attribute(_resolve(item["path"], db_roots))
            shown.append(f'<figure class="{STATUS_CLASS.get(status, "neg")}">{_img(src, item["path"], title=tip)}'
                         f"<figcaption>{rank}</figcaption></figure>")
        precision_cells = "".join(
            '<td class="num" data-sort="{1}">{0}</td>'.format(*_num((entry.get("precision") or {}).get(k)))
            for k in ks)
        bad = ' class="bad"' if ap is not None and ap < 0.5 else ""
        rows.append(
            f'<tr{bad}><td class="num">{q + 1}</td><td class="query" data-sort="{_e(entry["query"])}">'
            f'{_img(q_src, entry["query"])}<div>{_e(entry["query"])}</div></td>'
            f'<td class="num ap" data-sort="{ap_key}">{ap_text}</td>{precision_cells}'
            f'<td data-sort="{ap_key}">{_pr_svg(precision, recall)}</td>'
            f'<td><div class="top">{"".join(shown)}</div></td></tr>')

    plots = []
    valid = [(a, c, e) for a, c, e in zip(aps, curves, entries) if a is not None]
    if valid:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        grid = np.linspace(0, 1, 101)
        for a, (p, r), e in sorted(valid, key=lambda t: t[0])[:5]:
            if r.size:
                ax.step(np.concatenate([[0], r]), np.concatenate([[p[0]], p]), where="post", lw=1,
                        alpha=0.8, label=f"AP {a:.2f} {Path(e['query']).name[:28]}")
        ax.plot(grid, _mean_interpolated_pr([c for _, c, _ in valid], grid), color="black", lw=2.5,
                label="mean (interpolated)")
        ax.set(xlabel="recall" + ("" if all(e.get("n_positives") for _, _, e in valid)
                                   else f" (of positives in the top {max(len(e.get('top', [])) for e in entries)})"),
               ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.05),
               title="Precision-recall: mean and the 5 worst queries")
        ax.legend(fontsize=7, loc="lower left")
        ax.grid(alpha=0.3)
        plots.append(_plot_html(_figure_uri(fig), "precision-recall curves"))

        fig, ax = plt.subplots(figsize=(6, 4.2))
        sorted_aps = np.sort([a for a, _, _ in valid])
        colors = ["#c62828" if a < 0.5 else "#2e7d32" for a in sorted_aps]
        ax.bar(np.arange(len(sorted_aps)), sorted_aps, color=colors, width=1.0)
        ax.axhline(float(np.mean(sorted_aps)), color="black", lw=1, ls="--",
                   label=f"mAP {float(np.mean(sorted_aps)):.3f}")
        ax.set(xlabel="queries, worst to best", ylabel="AP", ylim=(0, 1.02), title="Per-query AP")
        ax.legend(loc="lower right")
        plots.append(_plot_html(_figure_uri(fig), "per-query average precision, sorted"))

    summary = block
    mp = " ".join(f"mP@{k} {_num(v)[0]}" for k, v in summary.get("mp_at_k", {}).items())
    header = (f'<th data-type="num">#</th><th>query</th><th data-initial-sort="1">AP</th>'
              + "".join(f"<th>P@{_e(k)}</th>" for k in ks)
              + '<th>precision-recall</th><th>top 10 (<span style="color:#2e7d32">correct</span>, '
                '<span style="color:#c62828">wrong</span>, <span style="color:#9e9e9e">junk</span>)</th>')
    page_title = title or f"Retrieval report: {rankings_file.name}"
    other = [s for s in settings if s != name]
    body = (
        f"<h1>{_e(page_title)}</h1>"
        f'<p class="meta">protocol {_e(doc.get("protocol", "?"))}, setting <b>{_e(name)}</b>'
        f'{" (also in the file: " + _e(", ".join(other)) + ")" if other else ""}; '
        f'{len(entries)} queries shown; <b>mAP {_num(summary.get("map"))[0]}</b> {_e(mp)}; '
        f"source {_e(rankings_file)}</p>"
        f'<div class="plots">{"".join(plots)}</div>'
        f"<h2>Queries (click a column header to sort; worst AP first)</h2>"
        f'<table class="sortable" id="queries"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
        f"{_failed_html(embedder)}"
    )
    write_text_atomic(out_file, _page(page_title, body, embedder))
    return ReportSummary(out_file, "evaluation", len(rows), len(embedder.cache), len(embedder.failed), len(plots))


# -- ablation reports -------------------------------------------------------------------------------

def write_ablation_report(ablation_dir: str | Path, out_file: str | Path, *, images_root: str | Path | None = None,
                          link_images: bool = False, title: str | None = None) -> ReportSummary:
    """Write the HTML report of an ``rkit ablate`` output folder; see the module docstring."""
    from .ablate import DEFAULT_SETTINGS, TABLE_KS, load_ablation

    ablation_dir, out_file = Path(ablation_dir), Path(out_file)
    result = load_ablation(ablation_dir)
    plt = _pyplot()
    embedder = ImageEmbedder(out_file, link_images)
    data_root = Path(images_root) if images_root is not None else Path(result.data_root) if result.data_root else None
    axes = result.axes or ["pooling"]
    ok = [c for c in result.cells if c.status == "ok" and c.map is not None]

    def label(cell: Any) -> str:
        return " ".join(f"{a}={cell.axes.get(a, cell.settings.get(a, ''))}" for a in axes)

    plots = []
    if ok:
        ranked = sorted(ok, key=lambda c: c.map)
        fig, ax = plt.subplots(figsize=(7, 0.28 * len(ranked) + 1.2))
        ax.barh(np.arange(len(ranked)), [c.map for c in ranked], color="#1565c0")
        ax.set_yticks(np.arange(len(ranked)), [label(c) for c in ranked], fontsize=7)
        for i, c in enumerate(ranked):
            ax.text(c.map, i, f" {c.map:.3f}", va="center", fontsize=7)
        ax.set(xlabel="mAP", xlim=(0, 1.08), title="mAP of every cell")
        plots.append(_plot_html(_figure_uri(fig), "mAP per cell"))

        for axis in axes:
            others = [a for a in axes if a != axis]
            values = list(dict.fromkeys(c.axes.get(axis, "") for c in ok))
            lines: dict[str, dict[str, float]] = {}
            for c in ok:
                key = " ".join(f"{a}={c.axes.get(a, '')}" for a in others) or "mAP"
                lines.setdefault(key, {})[c.axes.get(axis, "")] = c.map
            if len(values) < 2 or len(lines) > 12 or all(len(points) < 2 for points in lines.values()):
                continue  # nothing to compare along this axis
            fig, ax = plt.subplots(figsize=(6, 4))
            for key, points in lines.items():
                xs = [i for i, v in enumerate(values) if v in points]
                ax.plot(xs, [points[values[i]] for i in xs], marker="o", label=key)
            ax.set_xticks(range(len(values)), values)
            ax.set(xlabel=axis, ylabel="mAP", title=f"mAP by {axis}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            plots.append(_plot_html(_figure_uri(fig), f"mAP by {axis}"))

        classes = sorted({k for c in ok for k in c.per_class_ap})
        if classes:
            matrix = np.array([[np.nan if c.per_class_ap.get(k) is None else c.per_class_ap[k] for k in classes]
                               for c in ok], dtype=float)
            fig, ax = plt.subplots(figsize=(0.6 * len(classes) + 3, 0.3 * len(ok) + 1.8))
            image = ax.imshow(matrix, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
            ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
            ax.set_yticks(range(len(ok)), [label(c) for c in ok], fontsize=7)
            fig.colorbar(image, ax=ax, label="mean AP of the class's queries")
            ax.set_title("AP per class and cell")
            plots.append(_plot_html(_figure_uri(fig), "per-class AP heatmap"))

    header = ([*axes, "out dim", "mAP", *(f"mP@{k}" for k in TABLE_KS), "status", "whitening learned",
               "fit s", "eval s"])
    rows = []
    for c in result.cells:
        cells = [f'<td data-sort="{_e(c.axes.get(a, c.settings.get(a, "")))}">{_e(c.axes.get(a, c.settings.get(a, "")))}</td>'
                 for a in axes]
        cells.append('<td class="num" data-sort="{0}">{0}</td>'.format("" if c.out_dim is None else c.out_dim))
        for value in [c.map, *(c.mp_at_k.get(str(k)) for k in TABLE_KS)]:
            text, key = _num(value)
            cells.append(f'<td class="num" data-sort="{key}">{text}</td>')
        status = "ok" if c.status == "ok" else f"FAILED: {c.error}"
        cells.append(f'<td class="{"" if c.status == "ok" else "failed"}">{_e(status)}</td>')
        cells.append(f"<td>{_e(c.whitening_protocol)}</td>")
        for key in ("fit", "evaluate"):
            text, sort = _num(c.seconds.get(key), 2)
            cells.append(f'<td class="num" data-sort="{sort}">{text}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    table = (f'<table class="sortable" id="cells"><thead><tr>'
             + "".join(f"<th{_INITIAL_DESC if h == 'mAP' else ''}>{_e(h)}</th>" for h in header)
             + f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")

    query_section = ""
    best = max(ok, key=lambda c: c.map) if ok else None
    if best is not None and best.group in result.query_paths:
        paths = result.query_paths[best.group]
        same = [c for c in ok if c.group == best.group or len(c.per_query_ap) == len(paths)]
        qrows = []
        for i, path in enumerate(paths):
            values = [c.per_query_ap[i] for c in same if i < len(c.per_query_ap) and c.per_query_ap[i] is not None]
            best_ap = best.per_query_ap[i] if i < len(best.per_query_ap) else None
            src = embedder.attribute(_resolve(path, [data_root]))
            cols = [_num(best_ap), _num(float(np.mean(values)) if values else None),
                    _num(float(np.min(values)) if values else None)]
            qrows.append(f'<tr><td class="query" data-sort="{_e(path)}">{_img(src, path)}<div>{_e(path)}</div></td>'
                         f'<td data-sort="{_e(Path(path).parent.name)}">{_e(Path(path).parent.name)}</td>'
                         + "".join(f'<td class="num" data-sort="{k}">{t}</td>' for t, k in cols) + "</tr>")
        query_section = (
            f"<h2>Queries (AP in the best cell: {_e(label(best))}; worst first)</h2>"
            f'<table class="sortable" id="queries"><thead><tr><th>query</th><th>class</th>'
            f'<th data-initial-sort="1">AP, best cell</th><th>mean AP over {len(same)} cells</th>'
            f"<th>lowest AP over cells</th></tr></thead><tbody>{''.join(qrows)}</tbody></table>")

    s = result.stats
    fixed = ", ".join(f"{k}={v}" for k, v in result.base.items() if k not in axes and k in DEFAULT_SETTINGS)
    page_title = title or f"Ablation report: {ablation_dir.name}"
    body = (
        f"<h1>{_e(page_title)}</h1>"
        f'<p class="meta">{len(result.cells)} cells ({len(ok)} ok, {len(result.failed)} failed); fixed: {_e(fixed)}. '
        f"Extractions for {s.get('extraction_groups', 0)} groups: {s.get('extractions_run', 0)} run "
        f"({s.get('extraction_s', 0):.1f} s; without sharing about {s.get('unshared_extraction_estimate_s', 0):.1f} s), "
        f"{s.get('extractions_reused', 0) + s.get('extractions_skipped', 0)} reused from an earlier run; "
        f"wall time {s.get('wall_s', 0):.1f} s. Source {_e(ablation_dir)}</p>"
        f'<div class="plots">{"".join(plots)}</div>'
        f"<h2>Cells (click a column header to sort)</h2>{table}{query_section}{_failed_html(embedder)}"
    )
    write_text_atomic(out_file, _page(page_title, body, embedder))
    return ReportSummary(out_file, "ablation", len(result.cells), len(embedder.cache), len(embedder.failed), len(plots))


def write_report(source: str | Path, out_file: str | Path | None = None, **options: Any) -> ReportSummary:
    """An ablation report for a folder, an evaluation report for a rankings file."""
    source = Path(source)
    if source.is_dir():
        target = Path(out_file) if out_file is not None else source / "report.html"
        options.pop("setting", None), options.pop("max_queries", None)
        return write_ablation_report(source, target, **options)
    if source.is_file():
        target = Path(out_file) if out_file is not None else source.with_suffix(".html")
        return write_evaluation_report(source, target, **options)
    raise RkitError(f"{source} does not exist: give the rankings file of `rkit eval --save-rankings FILE` "
                    f"or the output folder of `rkit ablate --out DIR`")
