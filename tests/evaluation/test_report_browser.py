"""report.html renders in a real headless Chromium with every image loaded and fits a 1280 px
window (Debian's chromium; .ci/run installs it; skipped with the reason where it is not installed)."""

import re
import shutil
import subprocess

import pytest
from PIL import Image

import torch

from t2i_align.evaluate import run_evaluation
from t2i_align.evaluation.aggregate import plot_results, result_rows
from t2i_align.evaluation.report import write_html
from tests.evaluation.test_evaluate import eval_cfg

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--allow-file-access-from-files", "--virtual-time-budget=5000"]


def chromium(page, tmp_path, *args):
    profile = tmp_path / "profile"
    result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def body_data(dom: str, name: str) -> int:
    body = re.search(r"<body[^>]*>", dom).group(0)
    return int(re.search(rf'data-{name}="(\d+)"', body).group(1))


def body_counts(dom: str) -> tuple[int, int]:
    return body_data(dom, "images"), body_data(dom, "broken-images")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("report")
    run_evaluation(eval_cfg(["eval.num_prompts=2", "eval.steps=2"]), run_dir)
    return run_dir / "report.html"


def test_report_renders_with_all_images_loaded(report, tmp_path):
    dom = chromium(report, tmp_path, "--dump-dom")
    assert "t2i_align evaluation" in dom and "a red circle on a grey background" in dom
    assert body_counts(dom) == (1 + 2 * 2, 0)  # grid + 2 prompts x 2 seeds, none broken
    shot = tmp_path / "shot.png"
    chromium(report, tmp_path, f"--screenshot={shot}", "--window-size=1000,1400")
    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200, "the screenshot looks blank"


def test_moved_report_says_its_images_are_missing(report, tmp_path):
    moved = tmp_path / "moved" / "report.html"
    moved.parent.mkdir()
    shutil.copy(report, moved)  # without grid.png and the image cache
    dom = chromium(moved, tmp_path, "--dump-dom")
    assert body_counts(dom) == (5, 5)
    assert "5 of 5 images could not be loaded" in dom


@pytest.fixture(scope="module")
def toy_like_report(tmp_path_factory):
    """A report shaped like the toy run's (no models needed): base vs one aligned checkpoint at
    step 300, three rate rewards (one used on the training data), 12 prompts x 2 seeds, long
    prompts and model names, and a wide grid image."""
    run_dir = tmp_path_factory.mktemp("toy_like")
    prompts = [f"a long held-out prompt number {i} about a neon {c} on a plain background"
               for i, c in enumerate(["circle", "square", "triangle"] * 4)]
    keys = [(p, s) for p in prompts for s in (0, 1)]
    names = ["base", "a_rather_long_aligned_model_name@300"]
    g = torch.Generator().manual_seed(0)
    scores = {r: {"base": (torch.rand(len(keys), generator=g) < 0.3).float(),
                  names[1]: (torch.rand(len(keys), generator=g) < 0.8).float()}
              for r in ("toy_style", "toy_colour", "toy_shape")}
    rows = result_rows(scores, [""] * len(keys), [{"name": names[0], "step": None}, {"name": names[1], "step": 300}],
                       "base", keys=keys, data_rewards=["toy_style"])
    plot = plot_results(rows, run_dir)
    assert plot.name == "comparison.png"  # one checkpoint: no reward-vs-step plot
    Image.new("RGB", (2600, 700), "white").save(run_dir / "grid.png")  # wider than the window
    images = {}
    for m in names:
        for i, key in enumerate(keys):
            path = run_dir / "images" / m / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 64), (40 * i % 255, 90, 200 if m == "base" else 30)).save(path)
            images[(m, key)] = path
    gallery = [{"prompt": p, "seed": s, "images": {m: images[(m, (p, s))] for m in names},
                "scores": {m: {r: scores[r][m][keys.index((p, s))].item() for r in scores} for m in names}}
               for p, s in keys]
    return write_html(run_dir, rows, gallery, names, list(scores), plot=plot)


def test_toy_like_report_fits_a_1280px_window_and_shows_base_vs_aligned(toy_like_report, tmp_path):
    dom = chromium(toy_like_report, tmp_path, "--dump-dom", "--window-size=1280,900")
    assert body_data(dom, "inner-width") == 1280
    assert body_data(dom, "scroll-width") <= body_data(dom, "inner-width"), "the page is wider than its window"
    assert body_counts(dom) == (1 + 1 + 12 * 2 * 2, 0)  # plot + grid + gallery, none broken
    assert "Base vs aligned" in dom and "Reward vs training step" not in dom
    assert "toy_style was used on the training data" in dom and "not independent evidence" in dom
    assert "Holm-Bonferroni correction over the 3 comparisons" in dom and "12 prompts x 2 seeds" in dom
    shot = toy_like_report.parent / "screenshot.png"
    chromium(toy_like_report, tmp_path, f"--screenshot={shot}", "--window-size=1280,1600")
    assert Image.open(shot).size == (1280, 1600)
