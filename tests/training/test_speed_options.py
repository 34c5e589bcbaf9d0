"""Speed options change how the UNet runs, not what it computes. (trainer.compile is measured in
scripts/bench_step.py --options compile rather than tested here: inductor's first compile of even
the tiny UNet takes minutes on 2 CPU cores.)"""

import pytest

from tests.training.helpers import final_weights, read_metrics, train


def test_channels_last_trains_like_the_default_layout(tmp_path):
    run_a, final_a = train(tmp_path / "a", ["trainer.max_steps=2"])
    run_b, final_b = train(tmp_path / "b", ["trainer.max_steps=2", "trainer.channels_last=true"])
    losses_a = [m["loss"] for m in read_metrics(run_a)]
    assert [m["loss"] for m in read_metrics(run_b)] == pytest.approx(losses_a, rel=1e-4)
    wa, wb = final_weights(final_a), final_weights(final_b)
    assert wa.keys() == wb.keys()  # the saved UNet is the usual diffusers folder
    assert all(wb[k].is_contiguous() for k in wb)
