"""report.html renders in a real headless Chromium with every image loaded (Debian's chromium;
.ci/run installs it; skipped with the reason where it is not installed)."""

import re
import shutil
import subprocess

import pytest
from PIL import Image

from t2i_align.evaluate import run_evaluation
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


def body_counts(dom: str) -> tuple[int, int]:
    body = re.search(r"<body[^>]*>", dom).group(0)
    return int(re.search(r'data-images="(\d+)"', body).group(1)), int(re.search(r'data-broken-images="(\d+)"', body).group(1))


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
