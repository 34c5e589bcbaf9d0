"""The flux family's model options: model.guidance (FLUX.1-dev's guidance embedding; none on
schnell), model.flow (uniform unshifted sigmas by default, the dynamic shift as an option),
model.use_t5 (refused), model.max_sequence_length, the default LoRA targets (trained alone, with the
adapters-off reference), and the pipeline-call arguments that make sampling encode as training."""

import math

import pytest
import torch

from t2i_align.errors import InputError
from t2i_align.families import get_family, pipeline_call_kwargs
from t2i_align.models.loading import load_parts
from tests.families.test_families import UNET_FAMILIES
from tests.training.helpers import read_metrics, train

FLUX = ["model=tiny_flux", "data=generated", "data.num_generated=8", "trainer.max_steps=2", "trainer.batch_size=2"]


def _scheduler(**overrides):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from t2i_align.models.tiny_flux import SCHEDULER_CONFIG

    return FlowMatchEulerDiscreteScheduler(**{**SCHEDULER_CONFIG, **overrides})


@pytest.fixture(scope="module")
def schnell_path(tmp_path_factory, t2i_cache):
    """The tiny model turned FLUX.1-schnell-shaped: no guidance embedding, a scheduler with a static
    shift of 1 (schnell's scheduler config)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from t2i_align.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("flux")
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel.from_config({**pipe.transformer.config, "guidance_embeds": False})
    folder = tmp_path_factory.mktemp("schnell")
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    FluxPipeline(transformer=transformer, scheduler=scheduler, vae=pipe.vae, text_encoder=pipe.text_encoder,
                 tokenizer=pipe.tokenizer, text_encoder_2=pipe.text_encoder_2,
                 tokenizer_2=pipe.tokenizer_2).save_pretrained(folder)
    return str(folder)


def test_guidance_reaches_the_transformer(tmp_path):
    """Same draws, another guidance value: another first SFT loss; null means 1.0 on FLUX.1-dev."""
    runs = {g: read_metrics(train(tmp_path / str(g), FLUX + ["method=sft", "trainer.max_steps=1",
                                                             f"model.guidance={g}"])[0])[0]
            for g in ("1.0", "4.0", "null")}
    assert runs["1.0"]["timestep_mean"] == runs["4.0"]["timestep_mean"]
    assert runs["1.0"]["loss"] != runs["4.0"]["loss"]
    assert runs["null"]["loss"] == runs["1.0"]["loss"]


def test_schnell_trains_without_guidance_and_refuses_a_guidance_value(tmp_path, schnell_path):
    base = FLUX + [f"model.path={schnell_path}", "method=dpo"]
    run_dir, _ = train(tmp_path / "schnell", base + ["model.guidance=null"])
    assert read_metrics(run_dir)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    with pytest.raises(InputError, match="no guidance embedding .*set model.guidance=null"):
        train(tmp_path / "refused", base + ["model.guidance=1.0"])
    with pytest.raises(InputError, match="use_dynamic_shifting false"):
        train(tmp_path / "shift", base + ["model.guidance=null", "model.flow.dynamic_shift=true"])


def test_guidance_and_flow_options_are_checked_with_one_line_errors():
    family = get_family("flux")
    family.check_options("fixed", {"weighting_scheme": "logit_normal", "dynamic_shift": True}, 3.5)
    for bad in (-1.0, float("nan"), "high"):
        with pytest.raises(InputError, match="model.guidance must be a finite number >= 0"):
            family.check_options("fixed", {}, bad)
    with pytest.raises(InputError, match=r"model.flow has unknown keys \['shift'\]"):
        family.check_options("fixed", {"shift": 3.0})
    with pytest.raises(InputError, match="model.flow.dynamic_shift must be true or false"):
        family.check_options("fixed", {"dynamic_shift": "yes"})
    for name in UNET_FAMILIES + ["sd3"]:
        with pytest.raises(InputError, match="model.guidance=1.0 applies to guidance-distilled transformers"):
            get_family(name).check_options("fixed", None, 1.0)
        get_family(name).check_options("fixed", None, None)


def test_default_sigmas_are_unshifted_uniform_and_dynamic_shift_is_fluxpipelines():
    """FLUX.1-dev's scheduler leaves its training table unshifted (dynamic shifting), so uniform u
    gives sigmas with mean ~0.5, as train_dreambooth_lora_flux.py trains; dynamic_shift applies
    FluxPipeline's shift for the latents' token count: mu = calculate_shift(tokens), sigma <-
    e^mu / (e^mu + 1 / sigma - 1)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    family, scheduler = get_family("flux"), _scheduler()
    x = torch.zeros(4000, 1, 8, 8)  # 4 x 4 = 16 image tokens (mu < 0.5 but > 0)

    def sigmas(flow):
        _, _, t = family.forward_pairs(scheduler, x, None, torch.Generator().manual_seed(0), "flow", flow=flow)
        return t / 1000

    plain = sigmas({})
    assert plain.mean().item() == pytest.approx(0.5, abs=0.02)
    config = scheduler.config
    mu = calculate_shift(16, config.base_image_seq_len, config.max_image_seq_len, config.base_shift,
                         config.max_shift)
    for tokens in (16, 1024, 4096):
        assert family.calculate_shift(tokens, config.base_image_seq_len, config.max_image_seq_len, config.base_shift,
                                      config.max_shift) == pytest.approx(calculate_shift(tokens), rel=1e-12)
    shifted = sigmas({"dynamic_shift": True})
    torch.testing.assert_close(shifted, math.exp(mu) / (math.exp(mu) + 1 / plain - 1))
    assert (shifted >= plain - 1e-6).all() and shifted.mean() > plain.mean() + 0.05  # mu > 0: noisier
    with pytest.raises(InputError, match="use_dynamic_shifting false"):
        family.forward_pairs(_scheduler(use_dynamic_shifting=False), x[:2], None, torch.Generator(), "flow",
                             flow={"dynamic_shift": True})


def test_training_without_t5_is_refused(tmp_path, t2i_cache):
    with pytest.raises(InputError, match="model.use_t5=false: FLUX.1 has no T5-less mode"):
        load_parts("tiny:flux", use_t5=False)
    with pytest.raises(InputError, match="no T5-less mode"):
        train(tmp_path / "no_t5", FLUX + ["method=sft", "model.use_t5=false"])


def test_max_sequence_length_sets_the_t5_tokens(t2i_cache):
    family = get_family("flux")
    parts = load_parts("tiny:flux", max_sequence_length=12, with_vae=False)
    assert parts.tokenizers[1].model_max_length == 12
    cond = family.encode_prompts(["a red circle", "x"], parts.text_encoders, parts.tokenizers)
    assert cond["encoder_hidden_states"].shape == (2, 12, parts.unet.config.joint_attention_dim)
    assert cond["pooled_projections"].shape == (2, parts.unet.config.pooled_projection_dim)
    assert set(family.TEXT_CACHE.values()) == set(cond)  # the latent cache stores all of it
    with pytest.raises(InputError, match="1 to 512 T5 tokens"):
        load_parts("tiny:flux", max_sequence_length=600, with_vae=False)


def test_lora_with_the_default_targets_gets_the_only_gradients(t2i_cache):
    """The diffusers FLUX script's targets; with the adapters-off reference, DPO's first loss is ln 2
    and only LoRA matrices receive gradients."""
    from t2i_align.models.lora import add_lora
    from t2i_align.models.reference import make_reference
    from t2i_align.objectives import get_objective
    from t2i_align.training.step import preference_step
    from tests.training.test_step import twin_batch

    family = get_family("flux")
    assert family.LORA_TARGETS == ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj",
                                   "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj",
                                   "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")
    parts = load_parts("tiny:flux", max_sequence_length=16)
    add_lora(parts.unet, rank=4, target_modules=family.LORA_TARGETS)
    batch = twin_batch()
    batch["pixels_l"] = torch.flip(batch["pixels_l"], dims=[-1])
    loss, _ = preference_step(
        batch, unet=parts.unet, reference=make_reference(parts.unet, "adapters_off"), vae=parts.vae,
        text_encoders=parts.text_encoders, tokenizers=parts.tokenizers, family="flux",
        noise_scheduler=parts.noise_scheduler, prediction_type=parts.prediction_type, objective=get_objective("dpo"),
        objective_hparams={"beta": 100.0}, generator=torch.Generator().manual_seed(1), caption_dropout=0.0,
        resolution=32, device="cpu", autocast=lambda: torch.autocast("cpu", enabled=False), guidance=1.0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    with_grad = {n for n, p in parts.unet.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all("lora_" in n for n in with_grad)
    assert any(n.startswith("single_transformer_blocks.0.attn.to_q.lora_B") for n in with_grad)


def test_pipeline_call_kwargs_follow_the_family(t2i_cache):
    from t2i_align.evaluation.sampling import load_pipeline

    flux = load_pipeline("tiny:flux", family="flux")
    assert pipeline_call_kwargs(flux) == {"max_sequence_length": 256}  # the tiny T5 tokenizer's length
    assert pipeline_call_kwargs(flux, lora_scale=0.5)["joint_attention_kwargs"] == {"scale": 0.5}
    short = load_pipeline("tiny:flux", family="flux", text_options={"max_sequence_length": 8})
    assert pipeline_call_kwargs(short) == {"max_sequence_length": 8}
    with pytest.raises(InputError, match="no T5-less mode"):
        pipeline_call_kwargs(load_pipeline("tiny:flux", family="flux", text_options={"use_t5": False}))
