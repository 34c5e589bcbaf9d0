"""trainer.text_encoders_on_cpu: the frozen text encoders stay in CPU RAM, encode there, and the
family's conditioning moves the embeddings to the training device. Here the training device is the
CPU too, so the device move is shown with the `meta` device, and the run with the option is checked
to train exactly like the default one."""

import pytest
import torch

from t2i_align.families import get_family
from t2i_align.training.recipe import place_text_encoders
from tests.training.helpers import read_metrics, train

META = torch.device("meta")


def test_place_text_encoders_keeps_them_on_the_cpu_or_moves_them():
    encoders = [torch.nn.Linear(3, 2), torch.nn.Linear(2, 2)]
    assert place_text_encoders(encoders, META, torch.bfloat16, on_cpu=True) == torch.device("cpu")
    assert {(p.device.type, p.dtype) for e in encoders for p in e.parameters()} == {("cpu", torch.bfloat16)}
    assert place_text_encoders(encoders, META, torch.bfloat16, on_cpu=False) == META
    assert {p.device.type for e in encoders for p in e.parameters()} == {"meta"}


@pytest.mark.parametrize("family,path", [("sd3", "tiny:sd3"), ("flux", "tiny:flux")])
def test_cpu_embeddings_reach_the_training_device(family, path, t2i_cache):
    from t2i_align.models.loading import load_parts

    parts = load_parts(path, with_vae=False)
    fam = get_family(family)
    text = fam.encode_prompts(["a red circle", "a blue square"], parts.text_encoders, parts.tokenizers)
    assert {v.device.type for v in text.values()} == {"cpu"}
    cond = fam.conditioning(text, original_sizes_w=None, original_sizes_l=None, crop_top_left=None,
                            with_rejected=False, resolution=32, time_ids="fixed", device=META,
                            guidance=1.0 if family == "flux" else None)
    assert {v.device.type for v in cond.values() if torch.is_tensor(v)} == {"meta"}


def test_a_run_with_the_encoders_on_cpu_trains_like_the_default(tmp_path, monkeypatch):
    from t2i_align.training import recipe

    placed = []
    real = recipe.place_text_encoders

    def spy(encoders, device, dtype, on_cpu=False):
        placed.append((len(encoders), on_cpu))
        return real(encoders, device, dtype, on_cpu=on_cpu)

    monkeypatch.setattr(recipe, "place_text_encoders", spy)
    common = ["model=tiny_sd3", "data=generated", "data.num_generated=8", "trainer.max_steps=2",
              "trainer.batch_size=2", "method=dpo"]
    default, _ = train(tmp_path / "default", common)
    on_cpu, _ = train(tmp_path / "cpu", common + ["trainer.text_encoders_on_cpu=true"])
    assert placed == [(3, False), (3, True)]  # CLIP-L, bigG, T5
    assert [r["loss"] for r in read_metrics(on_cpu)] == [r["loss"] for r in read_metrics(default)]
