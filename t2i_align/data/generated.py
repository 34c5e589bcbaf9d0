"""A small, deterministic, offline preference set in the Pick-a-Pic v2 schema.

Used by the default run and by tests, so nothing needs the network. Each pair is one drawn
scene (a coloured circle / square / triangle on a plain background); the preferred image is
vivid (saturated, bright), the dispreferred one the same scene made dull (desaturated and
dark). The preference is therefore learnable and easy to see in a grid.

Order and labels follow Pick-a-Pic: label_0 / label_1 are 1/0 or 0/1 at random (so the
chosen-first swap is exercised) and about one row in 16 is a tie (0.5 / 0.5), so tie dropping
is exercised too. caption_0 / caption_1 describe each image ("a vivid ..." / "a dull ..."),
following image order, as in Pick-Double-Caption.
"""

from __future__ import annotations

import io
import random

import datasets
from PIL import Image, ImageDraw, ImageEnhance
from t2i_align.errors import InputError

COLOURS = {
    "red": (230, 30, 30),
    "green": (30, 200, 60),
    "blue": (30, 80, 235),
    "yellow": (245, 215, 20),
    "orange": (250, 130, 20),
    "purple": (150, 40, 210),
    "pink": (250, 90, 170),
    "cyan": (20, 210, 230),
}
BACKGROUNDS = {
    "grey": (128, 128, 128),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "beige": (225, 210, 180),
}
SHAPES = ("circle", "square", "triangle")
TIE_PERIOD = 16  # one tie every TIE_PERIOD rows, at a fixed offset, for any seed

FEATURES = datasets.Features(
    {
        "caption": datasets.Value("string"),
        "jpg_0": datasets.Value("binary"),
        "jpg_1": datasets.Value("binary"),
        "label_0": datasets.Value("float64"),
        "label_1": datasets.Value("float64"),
        "caption_0": datasets.Value("string"),
        "caption_1": datasets.Value("string"),
    }
)


def _draw_scene(rng: random.Random, size: int, shape: str, colour, background) -> Image.Image:
    """Draw one shape of random size and position on a plain background."""
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    extent = rng.randint(size * 3 // 8, size * 3 // 4)
    left = rng.randint(0, size - extent)
    top = rng.randint(0, size - extent)
    box = (left, top, left + extent - 1, top + extent - 1)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        bottom, right = top + extent - 1, left + extent - 1
        draw.polygon([(left + extent // 2, top), (left, bottom), (right, bottom)], fill=colour)
    return image


def _dull(image: Image.Image) -> Image.Image:
    """The dispreferred version: most colour removed and darkened."""
    return ImageEnhance.Brightness(ImageEnhance.Color(image).enhance(0.2)).enhance(0.55)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def generated_pairs_table(num_pairs: int = 64, seed: int = 0, size: int = 64) -> datasets.Dataset:
    """Return `num_pairs` procedurally drawn preference pairs (PNG bytes), identical for a seed.

    Columns: caption, jpg_0, jpg_1 (PNG bytes), label_0, label_1 (1/0, 0/1 or 0.5/0.5),
    caption_0, caption_1 (per-image captions in image order).
    """
    if num_pairs < 1:
        raise InputError(f"num_pairs must be at least 1, got {num_pairs}")
    if size < 8:
        raise InputError(f"size must be at least 8 pixels, got {size}")
    rng = random.Random(seed)
    columns = {name: [] for name in FEATURES}
    for row in range(num_pairs):
        shape = rng.choice(SHAPES)
        colour_name = rng.choice(sorted(COLOURS))
        background_name = rng.choice(sorted(BACKGROUNDS))
        vivid = _draw_scene(rng, size, shape, COLOURS[colour_name], BACKGROUNDS[background_name])
        dull = _dull(vivid)
        scene = f"{colour_name} {shape} on a {background_name} background"
        vivid_first = rng.random() < 0.5
        if row % TIE_PERIOD == 3:
            labels = (0.5, 0.5)
        else:
            labels = (1.0, 0.0) if vivid_first else (0.0, 1.0)
        images = (vivid, dull) if vivid_first else (dull, vivid)
        captions = (f"a vivid {scene}", f"a dull {scene}")
        captions = captions if vivid_first else captions[::-1]
        article = "an" if colour_name[0] in "aeiou" else "a"
        columns["caption"].append(f"{article} {scene}")
        columns["jpg_0"].append(_png_bytes(images[0]))
        columns["jpg_1"].append(_png_bytes(images[1]))
        columns["label_0"].append(labels[0])
        columns["label_1"].append(labels[1])
        columns["caption_0"].append(captions[0])
        columns["caption_1"].append(captions[1])
    return datasets.Dataset.from_dict(columns, features=FEATURES)
