"""Procedural images with captions: a coloured shape on a background, in one of two styles.

- colours: red, yellow, green, blue (hues 0, 60, 120, 240 degrees, +-8 jitter), clearly apart
  for the nearest-hue metric; shapes: circle, square, triangle; sizes small / medium / large;
  random position.
- styles: "plain" = a flat shape (saturation 0.75, value 0.8) on light grey; "neon" = the shape
  at full saturation with a Gaussian glow on black. A caption prefix selects the style:
  "neon style: ..." / "plain style: ..."; without a prefix the world is mostly plain (85%).
- images are drawn at 2x and downsampled (smooth edges), 32x32 by default.

Everything is a pure function of a seed (random.Random), so datasets are reproducible.
"""

from __future__ import annotations

import colorsys
import random

from PIL import Image, ImageDraw, ImageFilter
from t2i_align.errors import InputError

COLOURS = {"red": 0.0, "yellow": 60.0, "green": 120.0, "blue": 240.0}  # hue in degrees
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": (0.30, 0.40), "medium": (0.45, 0.55), "large": (0.60, 0.70)}  # side / image side
STYLES = ("plain", "neon")
PREFIXES = {"neon": "neon style: ", "plain": "plain style: "}
TEMPLATES = ("a {colour} {shape}", "a {size} {colour} {shape}", "{colour} {shape}, {size}")
# Held out of the preference set's prompts: evaluation prompts use this template only.
EVAL_TEMPLATE = 2
PLAIN_BACKGROUND = (210, 210, 210)
UNPREFIXED_NEON_RATE = 0.15


def sample_scene(rng: random.Random) -> dict:
    """A random scene: colour, shape, size name, size fraction, centre, hue jitter."""
    size = rng.choice(list(SIZES))
    frac = rng.uniform(*SIZES[size])
    half = frac / 2
    return {"colour": rng.choice(list(COLOURS)), "shape": rng.choice(SHAPES), "size": size, "frac": frac,
            "cx": rng.uniform(half + 0.05, 1 - half - 0.05), "cy": rng.uniform(half + 0.05, 1 - half - 0.05),
            "jitter": rng.uniform(-8, 8)}


def _rgb(hue_degrees: float, saturation: float, value: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((hue_degrees % 360) / 360, saturation, value)
    return int(r * 255), int(g * 255), int(b * 255)


def _draw_shape(draw: ImageDraw.ImageDraw, scene: dict, scale: int, fill) -> None:
    s = scene["frac"] * scale
    cx, cy = scene["cx"] * scale, scene["cy"] * scale
    box = (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)
    if scene["shape"] == "circle":
        draw.ellipse(box, fill=fill)
    elif scene["shape"] == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - s / 2), (cx - s / 2, cy + s / 2), (cx + s / 2, cy + s / 2)], fill=fill)


def render(scene: dict, style: str, size: int = 32) -> Image.Image:
    """The scene drawn in `style` ("plain" or "neon"), size x size RGB."""
    if style not in STYLES:
        raise InputError(f"unknown style {style!r}; choose {STYLES}")
    big = 2 * size
    hue = COLOURS[scene["colour"]] + scene["jitter"]
    if style == "plain":
        image = Image.new("RGB", (big, big), PLAIN_BACKGROUND)
        _draw_shape(ImageDraw.Draw(image), scene, big, _rgb(hue, 0.75, 0.8))
    else:
        colour = _rgb(hue, 1.0, 1.0)
        glow = Image.new("RGB", (big, big), (0, 0, 0))
        _draw_shape(ImageDraw.Draw(glow), scene, big, colour)
        glow = glow.filter(ImageFilter.GaussianBlur(radius=big / 16))
        image = Image.blend(Image.new("RGB", (big, big), (0, 0, 0)), glow, 0.9)
        _draw_shape(ImageDraw.Draw(image), scene, big, colour)
    return image.resize((size, size), Image.LANCZOS)


def describe(scene: dict, template: int) -> str:
    """The caption of a scene without a style prefix."""
    return TEMPLATES[template].format(colour=scene["colour"], shape=scene["shape"], size=scene["size"])


def sample_captioned(rng: random.Random, size: int = 32) -> tuple[Image.Image, str, str]:
    """(image, caption, style) for pretraining: 35% neon-prefixed, 35% plain-prefixed, 30% with
    no prefix (rendered plain 85%, neon 15%)."""
    scene = sample_scene(rng)
    caption = describe(scene, rng.randrange(len(TEMPLATES)))
    u = rng.random()
    if u < 0.35:
        style, caption = "neon", PREFIXES["neon"] + caption
    elif u < 0.70:
        style, caption = "plain", PREFIXES["plain"] + caption
    else:
        style = "neon" if rng.random() < UNPREFIXED_NEON_RATE else "plain"
    return render(scene, style, size), caption, style


def _prompt_list(held_out: bool) -> list[str]:
    combos = [(c, s, z) for c in COLOURS for s in SHAPES for z in SIZES]
    templates = [EVAL_TEMPLATE] if held_out else [t for t in range(len(TEMPLATES)) if t != EVAL_TEMPLATE]
    return sorted({TEMPLATES[t].format(colour=c, shape=s, size=z) for c, s, z in combos for t in templates})


def prompt_count(held_out: bool = False) -> int:
    """How many distinct training (48) or held-out (36) prompts there are."""
    return len(_prompt_list(held_out))


def plain_prompts(count: int, seed: int, held_out: bool = False) -> list[str]:
    """`count` distinct unprefixed prompts: preference-set prompts use templates 0 and 1,
    held-out (evaluation) prompts only template 2, so the two never overlap."""
    prompts = _prompt_list(held_out)
    random.Random(seed).shuffle(prompts)
    if count > len(prompts):
        raise InputError(f"only {len(prompts)} distinct {'held-out' if held_out else 'training'} prompts, asked {count}")
    return prompts[:count]
