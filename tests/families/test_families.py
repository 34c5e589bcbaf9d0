"""The model-family interface (t2i_align/families/): the registry, each family's forward process,
inversion, prompt encoding and conditioning on tiny models, and that the loop names no family."""

import ast
import re
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler

from t2i_align.errors import InputError
from t2i_align.families import FAMILIES, INTERFACE, detect_family, get_family

PACKAGE = Path(__file__).resolve().parents[2] / "t2i_align"
TINY = {"sdxl": "sdxl", "sd": "sd21", "sd3": "sd3", "flux": "flux", "flux2": "flux2"}  # family -> tiny model kind
UNET_FAMILIES = ["sd", "sdxl"]  # DDPM families (sd3, flux, flux2: tests/families/test_sd3.py, test_flux*.py)


def ddpm(prediction_type):
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type=prediction_type)


def test_registry_refuses_an_unknown_family_naming_the_known_ones():
    with pytest.raises(InputError, match=r"unknown model family 'sd4'; choose one of sd3, flux, flux2, sdxl, sd$"):
        get_family("sd4")
    assert get_family("sd") is get_family(get_family("sd"))  # a family module passes through


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_provides_the_whole_interface(name):
    family = get_family(name)
    missing = [attr for attr in INTERFACE if not hasattr(family, attr)]
    assert not missing, f"family {name} lacks {missing}"
    assert family.NAME == name
    assert set(family.REQUIRED_SUBFOLDERS) >= {"vae", "scheduler"}


def test_detection_from_model_index():
    assert detect_family({"_class_name": "StableDiffusionXLPipeline"}) == "sdxl"
    assert detect_family({"_class_name": "X", "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}) == "sdxl"
    assert detect_family({"_class_name": "StableDiffusionPipeline", "text_encoder_2": [None, None]}) == "sd"
    assert detect_family({"_class_name": "StableDiffusion3Pipeline",
                          "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}) == "sd3"
    # FLUX.1 has a second text encoder (T5) too: it must be claimed before sdxl
    flux_index = {"_class_name": "FluxPipeline", "text_encoder_2": ["transformers", "T5EncoderModel"],
                  "transformer": ["diffusers", "FluxTransformer2DModel"]}
    assert detect_family(flux_index) == "flux"
    assert detect_family({**flux_index, "_class_name": "SomeFluxVariant"}) == "flux"  # by its transformer
    # FLUX.2 (dev: Flux2Pipeline + Mistral3, klein: Flux2KleinPipeline + Qwen3) is flux2, never flux
    flux2_index = {"_class_name": "Flux2Pipeline", "text_encoder": ["transformers", "Mistral3ForConditionalGeneration"],
                   "transformer": ["diffusers", "Flux2Transformer2DModel"]}
    assert detect_family(flux2_index) == "flux2"
    assert detect_family({**flux2_index, "_class_name": "Flux2KleinPipeline",
                          "text_encoder": ["transformers", "Qwen3ForCausalLM"]}) == "flux2"
    assert detect_family({**flux2_index, "_class_name": "SomeVariant"}) == "flux2"  # by its transformer
    assert detect_family({**flux_index, "_class_name": "FluxKontextPipeline"}) == "flux"


def test_pipeline_classes():
    from diffusers import AutoencoderKL, AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Pipeline, FluxPipeline, \
        StableDiffusionPipeline, StableDiffusionXLPipeline

    assert get_family("sd").pipeline_class() is StableDiffusionPipeline
    assert get_family("sdxl").pipeline_class() is StableDiffusionXLPipeline
    assert get_family("flux").pipeline_class() is FluxPipeline
    assert get_family("flux2").pipeline_class() is Flux2KleinPipeline
    assert get_family("flux2").pipeline_class({"_class_name": "Flux2Pipeline"}) is Flux2Pipeline  # FLUX.2 [dev]
    assert get_family("flux2").pipeline_class({"text_encoder": ("transformers", "Mistral3ForConditionalGeneration")}) \
        is Flux2Pipeline  # a dev pipeline's config
    assert {name: get_family(name).vae_class() for name in FAMILIES} == {
        **{name: AutoencoderKL for name in FAMILIES}, "flux2": AutoencoderKLFlux2}


@pytest.mark.parametrize("name", UNET_FAMILIES)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_forward_process_gives_ddpm_x_t_and_target_on_hand_made_latents(name, prediction_type):
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with one t and eps per pair; the target is eps
    or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0."""
    sched = ddpm(prediction_type)
    x_w = torch.arange(2 * 4 * 2 * 2, dtype=torch.float32).view(2, 4, 2, 2) / 10
    x_l = -x_w + 0.5
    noisy, target, t = get_family(name).forward_pairs(sched, x_w, x_l, torch.Generator().manual_seed(3),
                                                      prediction_type)
    assert noisy.shape == target.shape == (4, 4, 2, 2) and t.shape == (4,)
    assert torch.equal(t[:2], t[2:])
    abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    x0 = torch.cat([x_w, x_l])
    eps = (noisy - abar.sqrt() * x0) / (1 - abar).sqrt()
    torch.testing.assert_close(eps[:2], eps[2:], rtol=0, atol=1e-4)  # the same noise for both images
    expected = eps if prediction_type == "epsilon" else abar.sqrt() * eps - (1 - abar).sqrt() * x0
    torch.testing.assert_close(target, expected, rtol=1e-4, atol=1e-4)
    # SFT: the chosen images only
    noisy_w, _, t_w = get_family(name).forward_pairs(sched, x_w, None, torch.Generator().manual_seed(3),
                                                     prediction_type)
    assert noisy_w.shape == x_w.shape and t_w.shape == (2,)


@pytest.mark.parametrize("name", UNET_FAMILIES)
def test_inversion_puts_x_t_on_the_forward_path_of_its_implied_noise(name):
    sched = ddpm("epsilon")
    x_w, x_l = torch.full((1, 4, 2, 2), 0.3), torch.full((1, 4, 2, 2), -0.2)
    calls = []

    def predict(x, t):
        calls.append(t)
        return torch.full_like(x, 0.1)

    noisy, target, t = get_family(name).inversion_pairs(sched, x_w, x_l, predict, torch.Generator().manual_seed(0),
                                                        "epsilon", num_steps=3, eta=0.0, evaluate_at="destination")
    assert calls and noisy.shape == target.shape == (2, 4, 2, 2) and torch.equal(t[:1], t[1:])
    abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(noisy, abar.sqrt() * torch.cat([x_w, x_l]) + (1 - abar).sqrt() * target,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", UNET_FAMILIES)
def test_prompt_encoding_conditioning_and_prediction_on_tiny_models(name):
    from t2i_align.models.loading import load_parts

    family = get_family(name)
    parts = load_parts(f"tiny:{TINY[name]}")
    assert parts.family == name
    text = family.encode_prompts(["a red circle", "a square"], parts.text_encoders, parts.tokenizers)
    hidden = text["encoder_hidden_states"]
    assert hidden.shape[:2] == (2, parts.tokenizers[0].model_max_length)
    assert hidden.shape[2] == parts.unet.config.cross_attention_dim
    assert set(family.TEXT_CACHE.values()) == set(text)  # the latent cache stores all of it
    if name == "sdxl":
        assert text["text_embeds"].shape == (2, parts.text_encoders[1].config.projection_dim)
    sizes = torch.tensor([[32, 32], [40, 48]])
    cond = family.conditioning({k: torch.cat([v, v]) for k, v in text.items()}, original_sizes_w=sizes,
                               original_sizes_l=sizes, crop_top_left=torch.zeros(2, 2, dtype=torch.long),
                               with_rejected=True, resolution=32, time_ids="fixed", device="cpu")
    assert cond["encoder_hidden_states"].shape[0] == 4
    if name == "sdxl":
        assert cond["added_cond_kwargs"]["time_ids"].tolist() == [[32, 32, 0, 0, 32, 32]] * 4
    else:
        assert "added_cond_kwargs" not in cond
    x = torch.randn(4, parts.unet.config.in_channels, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pred = family.predict(parts.unet, x, torch.tensor([10, 20, 10, 20]), cond)
    assert torch.is_tensor(pred) and pred.shape == x.shape
    scale, shift = family.latent_factors(parts.vae)
    assert scale == parts.vae.config.scaling_factor and shift is None


def test_family_options_and_denoiser_checks():
    from t2i_align.models.tiny import build_tiny_pipeline

    for name in UNET_FAMILIES:
        get_family(name).check_options("fixed")
        with pytest.raises(InputError, match="model.time_ids='real'"):
            get_family(name).check_options("real")
    sd_unet = build_tiny_pipeline("sd21").unet
    get_family("sd").check_denoiser(sd_unet, "here")
    with pytest.raises(InputError, match="an SD \\(non-XL\\) UNet, but family='sdxl'"):
        get_family("sdxl").check_denoiser(sd_unet, "here")


def _code_strings_and_names(path: Path) -> tuple[list[str], list[str]]:
    """String constants (docstrings excluded) and identifiers of a module."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    strings = [n.value for n in ast.walk(tree)
               if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]
    names = [n.id for n in ast.walk(tree) if isinstance(n, ast.Name)]
    names += [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
    names += [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    names += [a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments) for a in n.args + n.kwonlyargs]
    return strings, names


LOOP_MODULES = ["training/step.py", "training/recipe.py", "training/checkpoint.py"] + \
    sorted(str(p.relative_to(PACKAGE)) for p in (PACKAGE / "objectives").glob("*.py"))


@pytest.mark.parametrize("module", LOOP_MODULES)
def test_the_loop_step_and_objectives_name_no_family(module):
    strings, names = _code_strings_and_names(PACKAGE / module)
    family_word = re.compile(r"\b(%s)\b" % "|".join(FAMILIES), re.IGNORECASE)
    assert not [s for s in strings if family_word.search(s)], f"{module} names a family in a string"
    assert not [n for n in names if any(f in n.lower().split("_") for f in FAMILIES)], f"{module} names a family"
