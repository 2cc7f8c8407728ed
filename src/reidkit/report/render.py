"""Pictures and the self-contained HTML page of an :class:`~reidkit.report.EvaluationReport`.

Plots are drawn with matplotlib's object API (``matplotlib.figure.Figure`` on the Agg canvas: no
global pyplot state, no display needed), so this module needs the ``report`` extra. The HTML page
inlines every picture as a base64 PNG (and the worst queries' crops as small JPEGs), so the one
file can be mailed or attached to a ticket; it is written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..fileio import atomic_write, atomic_write_text, ensure_writable_dir
from .build import EvaluationReport

PICTURES = ("cmc", "distances", "roc", "camera_pairs")
_THUMB = (128, 64)  # (height, width) in pixels of a crop in the worst-queries list


def _figure(width: float = 6.4, height: float = 4.0):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("evaluation reports need matplotlib: pip install 'reidkit[report]'") from None
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# ---------------------------------------------------------------------------- plots
def cmc_png(curves: Mapping[str, np.ndarray], title: str = "CMC") -> bytes:
    """One or more CMC curves (``label -> (max_rank,)`` fractions) overlaid, as PNG bytes."""
    fig = _figure()
    ax = fig.add_subplot()
    for label, cmc in curves.items():
        cmc = np.asarray(cmc, dtype=np.float64)
        ranks = np.arange(1, len(cmc) + 1)
        ax.plot(ranks, 100 * cmc, marker="o" if len(cmc) <= 20 else None, markersize=3,
                label=f"{label} (rank-1 {100 * cmc[0]:.1f}%)")
    ax.set(xlabel="rank k", ylabel="matching rate at rank <= k (%)", title=title, ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _png(fig)


def distances_png(report: EvaluationReport) -> bytes:
    """Histograms of positive and negative pair distances with the FPR thresholds marked."""
    pos, neg = report.pairs.positive, report.pairs.negative
    fig = _figure()
    ax = fig.add_subplot()
    bins = np.histogram_bin_edges(np.concatenate([pos, neg]), bins=80)
    ax.hist(neg, bins=bins, density=True, alpha=0.55, color="tab:red", label=f"different identity ({len(neg):,} pairs)")
    ax.hist(pos, bins=bins, density=True, alpha=0.55, color="tab:green", label=f"same identity ({len(pos):,} pairs)")
    for point in report.operating_points:
        if math.isfinite(point.threshold):
            ax.axvline(point.threshold, color="black", linestyle="--", linewidth=0.8)
            ax.text(point.threshold, ax.get_ylim()[1] * 0.95, f" FPR {point.target_fpr:g}", fontsize=7, rotation=90, va="top")
    ax.set(xlabel="distance (smaller is closer)", ylabel="density", title="Query-gallery pair distances")
    ax.legend(fontsize="small")
    return _png(fig)


def roc_png(report: EvaluationReport) -> bytes:
    """Verification ROC (FPR on a log axis) with the operating points marked."""
    roc, n = report.roc, len(report.pairs.negative)
    fig = _figure()
    ax = fig.add_subplot()
    keep = roc.fpr > 0
    ax.plot(roc.fpr[keep], 100 * roc.tpr[keep], color="tab:blue")
    for point in report.operating_points:
        ax.plot([max(point.fpr, 1 / n)], [100 * point.tpr], "o", color="black", markersize=4)
        ax.annotate(f"{100 * point.tpr:.1f}% @ {point.target_fpr:g}", (max(point.fpr, 1 / n), 100 * point.tpr),
                    textcoords="offset points", xytext=(5, -10), fontsize=7)
    ax.set_xscale("log")
    ax.set(xlabel="false positive rate (different identities accepted)", ylabel="true positive rate (%)",
           title="Same / different identity verification by a distance threshold", xlim=(1 / n, 1), ylim=(0, 100))
    ax.grid(alpha=0.3, which="both")
    return _png(fig)


def camera_pairs_png(report: EvaluationReport) -> bytes:
    """Heat map of rank-1 per (query camera, gallery camera)."""
    table = report.cameras
    fig = _figure(1.6 + 0.55 * len(table.gallery_cameras), 1.4 + 0.45 * len(table.query_cameras))
    ax = fig.add_subplot()
    image = ax.imshow(100 * table.rank1, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    for a in range(len(table.query_cameras)):
        for b in range(len(table.gallery_cameras)):
            value = table.rank1[a, b]
            ax.text(b, a, "-" if np.isnan(value) else f"{100 * value:.0f}", ha="center", va="center",
                    color="white" if np.isnan(value) or value < 0.6 else "black", fontsize=8)
    ax.set_xticks(range(len(table.gallery_cameras)), [str(c) for c in table.gallery_cameras])
    ax.set_yticks(range(len(table.query_cameras)), [str(c) for c in table.query_cameras])
    ax.set(xlabel="gallery camera", ylabel="query camera", title="rank-1 (%) per camera pair")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return _png(fig)


def pictures(report: EvaluationReport) -> dict[str, bytes]:
    """``{"cmc", "distances", "roc", "camera_pairs"} -> PNG bytes``."""
    return {
        "cmc": cmc_png({"CMC": report.cmc}),
        "distances": distances_png(report),
        "roc": roc_png(report),
        "camera_pairs": camera_pairs_png(report),
    }


# ---------------------------------------------------------------------------- outputs
def write_report_pngs(report: EvaluationReport, folder: str | Path, query_paths: Sequence[str] | None = None,
                      gallery_paths: Sequence[str] | None = None, load_image: Callable | None = None) -> list[Path]:
    """Write ``cmc.png``, ``distances.png``, ``roc.png``, ``camera_pairs.png`` (and
    ``worst_queries.png`` when the image paths are given) into ``folder``, each atomically.

    Returns:
        The written paths.

    Raises:
        reidkit.fileio.OutputError: the folder cannot be written.
    """
    folder = ensure_writable_dir(folder, "--report-dir")
    written = []
    for name, png in pictures(report).items():
        written.append(atomic_write(folder / f"{name}.png", lambda handle, png=png: handle.write(png)))
    if query_paths is not None and gallery_paths is not None and len(report.worst):
        from ..visualize import ranked_list_grid

        rows = [(_image(query_paths[q], load_image), *_ranked_row(report, q, gallery_paths, load_image)) for q in report.worst]
        written.append(ranked_list_grid(rows, folder / "worst_queries.png"))
    return written


def _ranked_row(report: EvaluationReport, q: int, gallery_paths, load_image):
    ranked = [int(g) for g in report.queries.ranked[q] if g >= 0]
    images = [_image(gallery_paths[g], load_image) for g in ranked]
    distances = report.queries.ranked_distances[q, : len(ranked)].tolist()
    return images, distances, [bool(report.g_pids[g] == report.q_pids[q]) for g in ranked]


def _image(path: str, load_image: Callable | None):
    """The crop at ``path``, or a grey placeholder when it cannot be read."""
    from PIL import Image

    from ..data import ImageReadError, read_image

    try:
        return (load_image or read_image)(path)
    except (ImageReadError, OSError, ValueError):
        return Image.new("RGB", (_THUMB[1], _THUMB[0]), (200, 200, 200))


def render_report_html(report: EvaluationReport, title: str = "reidkit evaluation report",
                       query_paths: Sequence[str] | None = None, gallery_paths: Sequence[str] | None = None,
                       load_image: Callable | None = None) -> str:
    """The report as one self-contained HTML document (pictures inlined as base64)."""
    pics = pictures(report)
    parts = [
        f"<h1>{_e(title)}</h1>",
        _context_table(report),
        "<h2>Ranking</h2>", _metrics_table(report), _img(pics["cmc"], "CMC curve"),
        "<h2>Verification: same or different identity?</h2>",
        "<p>A pair (query, gallery image) is declared <em>the same person</em> when its distance is "
        "<strong>below</strong> the threshold (distances: smaller is closer). Pairs are the ones the "
        "ranking protocol scores: junk images and same-camera images of the query's identity are left out.</p>",
        _operating_table(report), _img(pics["roc"], "ROC"), _img(pics["distances"], "pair distances"),
        "<h2>Rank-1 per camera pair</h2>",
        "<p>Gallery restricted to one camera; '-' where no query has a correct match in that camera "
        "(same-camera matches of the query's identity are never ranked).</p>",
        _camera_table(report), _img(pics["camera_pairs"], "rank-1 per camera pair"),
        "<h2>Worst queries by average precision</h2>", _worst_table(report, query_paths, gallery_paths, load_image),
    ]
    return _PAGE.format(title=_e(title), body="\n".join(parts))


def write_report_html(report: EvaluationReport, path: str | Path, title: str = "reidkit evaluation report",
                      query_paths: Sequence[str] | None = None, gallery_paths: Sequence[str] | None = None,
                      load_image: Callable | None = None) -> Path:
    """Write :func:`render_report_html` to ``path`` atomically (temporary file + fsync + rename).

    Args:
        report: the report.
        path: the ``.html`` file.
        title: page title.
        query_paths, gallery_paths: image files of the queries and gallery items, in the
            matrix's order, to show the worst queries' crops (optional).
        load_image: reads one of those paths into a PIL image (default
            :func:`reidkit.data.read_image`); unreadable crops show grey.

    Raises:
        reidkit.fileio.OutputError: the file cannot be written (an older file stays intact).
    """
    return atomic_write_text(path, render_report_html(report, title, query_paths, gallery_paths, load_image))


# ---------------------------------------------------------------------------- HTML pieces
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; font-size: 90%; }}
th {{ background: #f2f2f2; }} td.l, th.l {{ text-align: left; }}
img.plot {{ max-width: 100%; display: block; margin: 0.5em 0 1.5em; }}
img.crop {{ width: 32px; height: 64px; border: 3px solid #999; margin-right: 2px; }}
img.crop.ok {{ border-color: #28aa3c; }} img.crop.bad {{ border-color: #d22828; }} img.crop.q {{ border-color: #333; }}
.note {{ color: #666; font-size: 90%; }}
</style></head><body>
{body}
</body></html>
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _img(png: bytes, alt: str) -> str:
    return f'<img class="plot" alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _pct(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _context_table(report: EvaluationReport) -> str:
    rows = dict(report.context)
    rows.update({
        "queries": f"{len(report.q_pids):,} ({report.num_valid_queries:,} with a correct match)",
        "gallery": f"{len(report.g_pids):,}",
        "pairs": f"{len(report.pairs.positive):,} same identity, {report.pairs.num_negative_pairs:,} different"
                 + ("" if len(report.pairs.negative) == report.pairs.num_negative_pairs
                    else f" ({len(report.pairs.negative):,} sampled for the ROC)"),
    })
    return "<table>" + "".join(f'<tr><th class="l">{_e(k)}</th><td class="l">{_e(v)}</td></tr>' for k, v in rows.items()) + "</table>"


def _metrics_table(report: EvaluationReport) -> str:
    keys = [k for k, v in report.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    head = "".join(f"<th>{_e(k)} (%)</th>" for k in keys)
    cells = "".join(f"<td>{_pct(float(report.metrics[k]))}</td>" for k in keys)
    return f"<table><tr>{head}</tr><tr>{cells}</tr></table>"


def _operating_table(report: EvaluationReport) -> str:
    rows = []
    for p in report.operating_points:
        note = "" if p.resolved else f"fewer than {1 / p.target_fpr:,.0f} negative pairs: not resolved"
        rows.append(f"<tr><td>{p.target_fpr:g}</td><td>{100 * p.tpr:.2f}</td><td>{p.threshold:.4f}</td>"
                    f"<td>{p.fpr:.2e}</td><td class=\"l note\">{_e(note)}</td></tr>")
    return ("<table><tr><th>target FPR</th><th>TPR (%)</th><th>distance threshold</th><th>FPR reached</th>"
            "<th class=\"l\"></th></tr>" + "".join(rows) + "</table>")


def _camera_table(report: EvaluationReport) -> str:
    t = report.cameras
    head = "".join(f"<th>gallery cam {_e(c)}</th>" for c in t.gallery_cameras)
    rows = []
    for a, cam in enumerate(t.query_cameras):
        cells = "".join(f'<td title="{t.num_queries[a, b]} queries">{_pct(t.rank1[a, b])}</td>' for b in range(len(t.gallery_cameras)))
        rows.append(f"<tr><th>query cam {_e(cam)}</th>{cells}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def _worst_table(report: EvaluationReport, query_paths, gallery_paths, load_image) -> str:
    if not len(report.worst):
        return "<p>No valid query.</p>"
    crops = query_paths is not None and gallery_paths is not None
    rows = []
    for q in report.worst.tolist():
        ranked = [int(g) for g in report.queries.ranked[q] if g >= 0]
        shown = ""
        if crops:
            shown = _crop(query_paths[q], "q", load_image) + "".join(
                _crop(gallery_paths[g], "ok" if report.g_pids[g] == report.q_pids[q] else "bad", load_image) for g in ranked)
        name = _e(Path(query_paths[q]).name) if query_paths is not None else str(q)
        rows.append(f"<tr><td>{q}</td><td class=\"l\">{name}</td><td>{report.q_pids[q]}</td><td>{report.q_camids[q]}</td>"
                    f"<td>{_pct(report.queries.ap[q])}</td><td>{report.queries.first_rank[q]}</td>"
                    f"<td class=\"l\">{shown}</td></tr>")
    legend = ("<p class=\"note\">Query framed black, then its top-ranked gallery crops: green = same identity, "
              "red = another identity.</p>" if crops else "")
    return (legend + "<table><tr><th>query</th><th class=\"l\">image</th><th>pid</th><th>camera</th><th>AP (%)</th>"
            "<th>first correct rank</th><th class=\"l\">ranked list</th></tr>" + "".join(rows) + "</table>")


def _crop(path: str, kind: str, load_image) -> str:
    image = _image(path, load_image).convert("RGB").resize((_THUMB[1], _THUMB[0]))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return (f'<img class="crop {kind}" alt="{_e(Path(path).name)}" title="{_e(Path(path).name)}" '
            f'src="data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}">')
