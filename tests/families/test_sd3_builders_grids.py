"""Dataset builders (sd3, flux, flux2), grids and the evaluation's image cache on the sd3 family (tiny_sd3): they
sample through StableDiffusion3Pipeline with the model's T5 settings, and those settings are part
of what keys the images."""

import io

import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from t2i_align.build_dataset import build
from t2i_align.evaluation.sampling import load_pipeline, model_cache_key, text_options_of
from t2i_align.families import pipeline_call_kwargs
from t2i_align.grid import make_grid
from tests.training.helpers import CONF_DIR, train


def _cfg(name, overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(name, overrides=overrides)


@pytest.mark.parametrize("model", ["tiny_sd3", "tiny_flux", "tiny_flux2"])
def test_prefix_pair_builder_on_flow_families_writes_pickapic_rows(tmp_path, model):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox in the snow\na blue boat\n")
    out = build(_cfg("build_dataset", ["+dataset=pick_style_cartoon", f"model={model}", "dataset.steps=2",
                                       "dataset.batch_size=2", f"dataset.prompts={prompts}",
                                       "model.max_sequence_length=8", f"output_dir={tmp_path / 'out'}"]), tmp_path)
    rows = [r for f in sorted((out / "data").glob("train-*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert [r["caption"] for r in rows] == ["a red fox in the snow", "a blue boat"]
    for r in rows:
        assert r["model"] == "tiny:" + model.removeprefix("tiny_") and r["jpg_0"] != r["jpg_1"]
        assert Image.open(io.BytesIO(r["jpg_0"])).size == (32, 32)


def test_sampling_uses_the_model_text_options_and_keys_them(tmp_path, t2i_cache):
    base = {"path": "tiny:sd3", "family": "sd3", "max_sequence_length": 8, "use_t5": False}
    assert text_options_of(base) == {"max_sequence_length": 8, "use_t5": False}
    assert text_options_of({"path": "tiny:sdxl", "family": "sdxl"}) is None
    pipe = load_pipeline("tiny:sd3", family="sd3", text_options=text_options_of(base))
    assert pipe.text_encoder_3 is None and pipeline_call_kwargs(pipe) == {"max_sequence_length": 8}
    settings = {"steps": 2, "guidance_scale": 1.0, "resolution": 32}
    with_options = model_cache_key({"name": "base"}, base, settings)
    plain = model_cache_key({"name": "base"}, {"path": "tiny:sd3", "family": "sd3"}, settings)
    assert with_options.digest != plain.digest and "text" not in plain.key


def test_grid_base_vs_sd3_lora(tmp_path):
    _, final = train(tmp_path / "train", ["model=tiny_sd3", "data=generated", "data.num_generated=8",
                                          "method=sft", "trainer.lora.enabled=true", "trainer.lr=5e-2"])
    overrides = ["model=tiny_sd3", f"cache_dir={tmp_path / 'cache'}", "num_prompts=2", "eval.steps=2",
                 "score_with=null", f"models=[{{name: sft, lora: {final}}}]"]
    grid = Image.open(make_grid(_cfg("grid", overrides), tmp_path / "g"))
    assert grid.size[0] == 200 + 2 * 256
    assert len(list((tmp_path / "cache").rglob("*.png"))) == 4


def test_negative_prompt_is_refused_by_a_pipeline_that_takes_none(t2i_cache):
    import pytest

    from t2i_align.errors import InputError
    from t2i_align.families import negative_prompt_kwargs

    sd3 = load_pipeline("tiny:sd3", family="sd3")
    assert negative_prompt_kwargs(sd3, "blurry", 2) == {"negative_prompt": ["blurry", "blurry"]}
    assert negative_prompt_kwargs(sd3, None, 2) == {}
    klein = load_pipeline("tiny:flux2", family="flux2")
    with pytest.raises(InputError, match="takes no negative prompt"):
        negative_prompt_kwargs(klein, "blurry", 2)
