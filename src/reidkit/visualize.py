"""Pictures of ranked lists: the query and its top-K gallery matches in one PNG.

Drawn with Pillow (already a dependency) rather than matplotlib, to keep the install small.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from .fileio import save_picture

GREEN, RED, GREY = (40, 170, 60), (210, 40, 40), (150, 150, 150)


def ranked_list_grid(
    rows: Sequence[tuple[Image.Image, Sequence[Image.Image], Sequence[float], Sequence[bool | None]]],
    path: str | Path,
    cell: tuple[int, int] = (128, 64),
) -> Path:
    """Write one row per query: the query, then its ranked gallery images with distances.

    Args:
        rows: per query ``(query image, ranked gallery images, their distances (smaller is
            closer), whether each is a true match or ``None`` when unknown)``. True matches get a
            green frame, false ones red, unknown grey.
        path: picture to write (``.png``, ``.jpg``, ...; parent folders are created; atomic).
        cell: ``(height, width)`` in pixels of each thumbnail.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``rows`` is empty.
        reidkit.fileio.OutputError: unknown extension or the file cannot be written.
    """
    if not rows:
        raise ValueError("ranked_list_grid needs at least one row")
    h, w = cell
    pad, text_h = 6, 14
    ncols = 1 + max(len(r[1]) for r in rows)
    canvas = Image.new("RGB", (ncols * (w + pad) + pad * 3, len(rows) * (h + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (query, gallery, dists, matches) in enumerate(rows):
        y = pad + r * (h + text_h + pad)
        canvas.paste(query.convert("RGB").resize((w, h)), (pad, y))
        draw.text((pad, y + h + 1), "query", fill=(0, 0, 0))
        for c, (img, dist, match) in enumerate(zip(gallery, dists, matches), start=1):
            x = pad * 3 + c * (w + pad)
            colour = GREY if match is None else (GREEN if match else RED)
            draw.rectangle((x - 3, y - 3, x + w + 2, y + h + 2), outline=colour, width=3)
            canvas.paste(img.convert("RGB").resize((w, h)), (x, y))
            draw.text((x, y + h + 1), f"{c}: {dist:.3f}", fill=(0, 0, 0))
    return save_picture(canvas, path)
