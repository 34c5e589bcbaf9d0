"""A labelled comparison grid: rows = prompts, columns = models (base first), optional score
under each image. Pure PIL, so it works from freshly generated images or from a cache."""

import textwrap

from PIL import Image, ImageDraw, ImageFont
from t2i_align.errors import InputError

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)


def _font(size: int):
    try:  # Pillow >= 10.1 ships a scalable default font
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def comparison_grid(images: list[list[Image.Image]], row_labels: list[str], column_labels: list[str],
                    scores: list[list[float]] | None = None, cell: int = 256, label_width: int = 200,
                    header_height: int = 32, score_height: int = 20, font_size: int = 14) -> Image.Image:
    """Compose `images[row][column]` into one RGB image.

    Every image is resized to cell x cell; the left column holds each row's prompt (wrapped),
    the header each column's model name, and, when `scores` is given, a line under every image
    with its score.
    """
    rows, columns = len(images), len(column_labels)
    if rows == 0 or any(len(r) != columns for r in images):
        raise InputError(f"images must be a non-empty rows x {columns} table (one per model)")
    if len(row_labels) != rows:
        raise InputError(f"{len(row_labels)} row labels for {rows} rows")
    if scores is not None and (len(scores) != rows or any(len(r) != columns for r in scores)):
        raise InputError("scores must have the same rows x columns shape as images")
    below = score_height if scores is not None else 0
    width = label_width + columns * cell
    height = header_height + rows * (cell + below)
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    font = _font(font_size)
    for c, name in enumerate(column_labels):
        draw.text((label_width + c * cell + 4, 8), str(name), fill=INK, font=font)
    chars_per_line = max(8, label_width // max(1, font_size * 6 // 10))
    for r, row in enumerate(images):
        top = header_height + r * (cell + below)
        lines = textwrap.wrap(str(row_labels[r]), chars_per_line)[: cell // (font_size + 4)]
        draw.multiline_text((4, top + 4), "\n".join(lines), fill=INK, font=font, spacing=4)
        for c, image in enumerate(row):
            grid.paste(image.convert("RGB").resize((cell, cell), Image.Resampling.BICUBIC),
                       (label_width + c * cell, top))
            if scores is not None:
                draw.text((label_width + c * cell + 4, top + cell + 3), f"{scores[r][c]:.3f}", fill=INK, font=font)
    return grid
