"""The toy world: deterministic scenes, metrics that read rendered images right, disjoint
prompt sets, the toy rewards."""

import random

import pytest

from t2i_align.evaluation.prompts import load_prompts
from t2i_align.evaluation.rewards import load_reward
from t2i_align.toy.metrics import colour_of, dark_fraction, parse_prompt, shape_of, style_of
from t2i_align.toy.world import (COLOURS, PREFIXES, SHAPES, STYLES, plain_prompts, prompt_count, render,
                                 sample_captioned, sample_scene)


def test_scenes_and_images_are_a_function_of_the_seed():
    a = [sample_captioned(random.Random(3)) for _ in range(3)]
    b = [sample_captioned(random.Random(3)) for _ in range(3)]
    assert [(im.tobytes(), c, s) for im, c, s in a] == [(im.tobytes(), c, s) for im, c, s in b]
    image, caption, style = a[0]
    assert image.size == (32, 32) and style in STYLES


def test_caption_mix_follows_the_prefix_rule():
    rng = random.Random(0)
    samples = [sample_captioned(rng) for _ in range(2000)]
    neon_prefixed = [s for _, c, s in samples if c.startswith(PREFIXES["neon"])]
    plain_prefixed = [s for _, c, s in samples if c.startswith(PREFIXES["plain"])]
    unprefixed = [s for _, c, s in samples if not c.startswith(("neon style", "plain style"))]
    assert set(neon_prefixed) == {"neon"} and set(plain_prefixed) == {"plain"}
    assert 0.30 < len(neon_prefixed) / 2000 < 0.40 and 0.25 < len(unprefixed) / 2000 < 0.35
    assert 0.08 < unprefixed.count("neon") / len(unprefixed) < 0.22  # mostly plain without a prefix


def test_metrics_read_rendered_images():
    rng = random.Random(1)
    hits = {"style": 0, "colour": 0, "shape": 0}
    n = 300
    for _ in range(n):
        scene, style = sample_scene(rng), rng.choice(STYLES)
        image = render(scene, style)
        hits["style"] += style_of(image) == style
        hits["colour"] += colour_of(image) == scene["colour"]
        hits["shape"] += shape_of(image) == scene["shape"]
    assert hits["style"] == n and hits["colour"] == n
    assert hits["shape"] / n > 0.85
    assert dark_fraction(render(sample_scene(rng), "neon")) > 0.3 > dark_fraction(render(sample_scene(rng), "plain"))


def test_prompt_sets_are_disjoint_and_parse():
    train, held_out = plain_prompts(prompt_count(False), 0), plain_prompts(prompt_count(True), 0, held_out=True)
    assert (len(train), len(held_out)) == (48, 36) and not set(train) & set(held_out)
    assert load_prompts("toy:heldout") == plain_prompts(36, 0, held_out=True)
    for prompt in train + held_out:
        asked = parse_prompt(prompt)
        assert asked["colour"] in COLOURS and asked["shape"] in SHAPES and asked["style"] is None
    assert parse_prompt("neon style: a red circle") == {"colour": "red", "shape": "circle", "style": "neon"}
    with pytest.raises(ValueError, match="toy:train or toy:heldout"):
        load_prompts("toy:other")


def test_toy_rewards_score_rates():
    rng = random.Random(2)
    scenes = [sample_scene(rng) for _ in range(4)]
    images = [render(s, st) for s, st in zip(scenes, ["neon", "plain", "neon", "plain"])]
    prompts = [f"a {s['colour']} {s['shape']}" for s in scenes]
    assert load_reward("toy_style")(images, prompts).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert load_reward("toy_style", style="plain")(images, prompts).tolist() == [0.0, 1.0, 0.0, 1.0]
    assert load_reward("toy_colour")(images, prompts).tolist() == [1.0] * 4
    wrong = [f"a {'blue' if s['colour'] != 'blue' else 'red'} {s['shape']}" for s in scenes]
    assert load_reward("toy_colour")(images, wrong).tolist() == [0.0] * 4
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        load_reward("toy_shape")(images[:2], prompts[:1])
