"""The toy world's learning result (CI-sized): MaPO, DPO and InPO (its default: the frozen reference
inverts) on toy_sdxl, and MaPO and DPO on toy_sd3 (rectified flow), trained on a toy Pick-Style set built by
our own builder raise the neon rate on held-out plain prompts well above the base model's, while
prompt-following (colour, shape) does not collapse.

Smaller than the embedded default (3 seeds per prompt instead of 8; 2 evaluation seeds of 36
held-out prompts = 72 images per model), same trainer settings (conf/trainer/toy.yaml). Thresholds
are set well inside the measured margins (README: the toy world; see the numbers there).
"""

import pytest

from t2i_align.training.post_eval import evaluate_after_training
from t2i_align.training.recipe import run_training
from tests.training.helpers import make_cfg

NEON_GAIN = 0.50         # aligned neon rate - base neon rate on held-out plain prompts
PROMPT_FOLLOWING_DROP = 0.15  # largest allowed drop of the colour rate and of the shape rate
LEARNERS = ("mapo", "dpo", "inpo")
FLOW_LEARNERS = ("mapo", "dpo")  # on toy_sd3 (rectified flow, the sd3 family)
FLOW_MAX_DROP = {"toy_colour": 0.30, "toy_shape": 0.35}


def _toy_runs(root, model: str, methods) -> dict:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("T2I_ALIGN_CACHE", str(root / "cache"))
        results = {}
        for method in methods:
            cfg = make_cfg([f"+exp=toy_{method}", f"model={model}",
                            "data.build_overrides=['dataset.pairs_per_prompt=3']"])
            run_dir = root / method
            final = run_training(cfg, run_dir)
            rows = evaluate_after_training(cfg, final, run_dir)
            results[method] = {(r["model"], r["reward"]): r["mean"] for r in rows if r["group"] == "all"}
        return results


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    return _toy_runs(tmp_path_factory.mktemp("toy_learning"), "toy_sdxl", LEARNERS)


@pytest.fixture(scope="module")
def toy_flow_runs(tmp_path_factory):
    return _toy_runs(tmp_path_factory.mktemp("toy_flow_learning"), "toy_sd3", FLOW_LEARNERS)


def _check(rates: dict, method: str, max_drop: dict | None = None) -> None:
    base_neon, aligned_neon = rates[("base", "toy_style")], rates[(method, "toy_style")]
    assert aligned_neon - base_neon >= NEON_GAIN, rates
    for reward in ("toy_colour", "toy_shape"):
        drop = (max_drop or {}).get(reward, PROMPT_FOLLOWING_DROP)
        assert rates[(method, reward)] >= rates[("base", reward)] - drop, (reward, rates)


@pytest.mark.parametrize("method", LEARNERS)
def test_alignment_raises_the_style_and_keeps_prompt_following(toy_runs, method):
    _check(toy_runs[method], method)


@pytest.mark.parametrize("method", FLOW_LEARNERS)
def test_alignment_on_the_flow_model(toy_flow_runs, method):
    """The same on toy_sd3: MaPO and Diffusion-DPO (beta 2, model.toy) on velocity errors align a
    rectified-flow model. Prompt-following costs more here than on toy_sdxl (measured at this size:
    MaPO colour -0.04 / shape -0.24, DPO colour -0.19 / shape -0.17; README: the toy flow world), so
    the guard is "not collapsed": drops of at most 0.30 (colour) and 0.35 (shape)."""
    _check(toy_flow_runs[method], method, FLOW_MAX_DROP)
