"""post_eval: the evaluation after training runs for the model it is configured for only."""

from t2i_align.training.post_eval import evaluate_after_training
from tests.training.helpers import make_cfg


def test_post_eval_is_skipped_for_other_models_and_when_disabled(tmp_path):
    cfg = make_cfg(["post_eval=toy"])  # model=tiny_sdxl from the test defaults
    assert list(cfg.post_eval.when_model) == ["toy_sdxl", "toy_sd3"] and cfg.model.name == "tiny_sdxl"
    assert evaluate_after_training(cfg, tmp_path / "final", tmp_path) is None
    assert evaluate_after_training(make_cfg([]), tmp_path / "final", tmp_path) is None  # post_eval=none
    assert not (tmp_path / "eval").exists()


def test_no_argument_default_is_the_toy_experiment():
    from hydra import compose, initialize_config_dir

    from tests.training.helpers import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train")
    assert (cfg.model.name, cfg.method.name, cfg.data.build) == ("toy_sdxl", "mapo", "toy_pickstyle")
    assert "toy_sdxl" in cfg.post_eval.when_model
    assert cfg.trainer.batch_size == 8 and cfg.trainer.lr == 5e-5
