"""CLIP-based rewards (PickScore, CLIP score, LAION aesthetic) on a tiny CLIPModel.

The tiny model and its processor are saved to a temporary folder and loaded back through the
public loaders, exactly as a user loads the hub checkpoints. Scores are checked against a hand
computation with the model itself.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from t2i_align.evaluation.rewards.aesthetic import AestheticMLP, load_aesthetic
from t2i_align.evaluation.rewards.clip_common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, to_rgb
from t2i_align.evaluation.rewards.clip_score import clip_score_mean, load_clip_score
from t2i_align.evaluation.rewards.pickscore import load_pickscore

IMG = 32
PROJ = 16
PROMPTS = [
    "a photo of a cat",
    "an oil painting of a lighthouse at dusk",
    "a red cube on a blue sphere",
    "",
    "word " * 100,  # longer than 77 tokens: truncated
]


@pytest.fixture(scope="module")
def clip_dirs(tmp_path_factory):
    """(model_dir, processor_dir) of a tiny CLIP saved to disk."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from t2i_align.models.clip_tokenizer import offline_clip_tokenizer

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=IMG,
            patch_size=8,
        ),
        projection_dim=PROJ,
        logit_scale_init_value=2.6592,
    )
    model = CLIPModel(config).eval()
    with torch.no_grad():  # make the logit scale non-trivial
        model.logit_scale.fill_(3.0)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMG},
        crop_size={"height": IMG, "width": IMG},
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=offline_clip_tokenizer())
    root = tmp_path_factory.mktemp("tiny_clip")
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "processor")
    return str(root / "model"), str(root / "processor")


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [(40, 30), (32, 32), (64, 48), (50, 90), (33, 47), (100, 20)]
    modes = ["RGB", "RGBA", "L", "RGB", "P", "CMYK"]
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        img = Image.fromarray(arr, "RGB")
        out.append(img.convert(modes[i % len(modes)]))
    return out


def _manual_cos(model_dir, processor_dir, images, prompts):
    """Hand computation: embeddings from the model directly, normalised, cosine per pair."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(model_dir).eval()
    proc = CLIPProcessor.from_pretrained(processor_dir)
    with torch.no_grad():
        pix = proc(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        tok = proc(text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        img = model.get_image_features(pixel_values=pix).pooler_output
        txt = model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).pooler_output
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return (img * txt).sum(-1), model.logit_scale.exp().item(), img


def test_to_rgb_and_processor_shape(clip_dirs):
    imgs = to_rgb(_images(6))
    assert all(im.mode == "RGB" for im in imgs)
    reward = load_pickscore(*clip_dirs)
    out = reward.processor(images=imgs, return_tensors="pt")["pixel_values"]
    assert out.shape == (6, 3, IMG, IMG)


def test_pickscore_matches_manual(clip_dirs):
    images = _images(len(PROMPTS))
    reward = load_pickscore(*clip_dirs, batch_size=2)
    assert reward.name == "pickscore"
    scores = reward(images, PROMPTS)
    assert scores.dtype == torch.float32 and scores.shape == (len(PROMPTS),) and scores.device.type == "cpu"
    cos, scale, _ = _manual_cos(*clip_dirs, images, PROMPTS)
    assert scale == pytest.approx(np.exp(3.0), rel=1e-5)
    torch.testing.assert_close(scores, scale * cos, rtol=1e-4, atol=1e-4)


def test_batching_invariance(clip_dirs):
    images = _images(len(PROMPTS), seed=1)
    a = load_pickscore(*clip_dirs, batch_size=1)(images, PROMPTS)
    b = load_pickscore(*clip_dirs, batch_size=16)(images, PROMPTS)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    c = load_clip_score(clip_dirs[0], processor_path=clip_dirs[1], batch_size=1, clamp=False)(images, PROMPTS)
    d = load_clip_score(clip_dirs[0], processor_path=clip_dirs[1], batch_size=3, clamp=False)(images, PROMPTS)
    torch.testing.assert_close(c, d, rtol=1e-4, atol=1e-4)


def test_pickscore_preference(clip_dirs):
    reward = load_pickscore(*clip_dirs, batch_size=4)
    imgs_a, imgs_b = _images(len(PROMPTS), seed=2), _images(len(PROMPTS), seed=3)
    p_ab = reward.preference(imgs_a, imgs_b, PROMPTS)
    p_ba = reward.preference(imgs_b, imgs_a, PROMPTS)
    assert p_ab.shape == (len(PROMPTS),) and p_ab.dtype == torch.float32
    assert ((p_ab >= 0) & (p_ab <= 1)).all()
    torch.testing.assert_close(p_ab + p_ba, torch.ones_like(p_ab))
    sa, sb = reward(imgs_a, PROMPTS), reward(imgs_b, PROMPTS)
    torch.testing.assert_close(p_ab, torch.sigmoid(sa - sb), rtol=1e-5, atol=1e-6)
    assert ((p_ab > 0.5) == (sa > sb)).all()
    same = reward.preference(imgs_a, imgs_a, PROMPTS)
    torch.testing.assert_close(same, torch.full_like(same, 0.5))


def test_clip_score_matches_manual_and_clamps(clip_dirs):
    images = _images(6, seed=4)
    prompts = [f"prompt number {i}" for i in range(6)] + []
    cos, _, _ = _manual_cos(*clip_dirs, images, prompts)
    raw = load_clip_score(clip_dirs[0], processor_path=clip_dirs[1], clamp=False)(images, prompts)
    torch.testing.assert_close(raw, 100 * cos, rtol=1e-4, atol=1e-3)
    reward = load_clip_score(clip_dirs[0], processor_path=clip_dirs[1])
    assert reward.name == "clip_score"
    clamped = reward(images, prompts)
    torch.testing.assert_close(clamped, (100 * cos).clamp_min(0), rtol=1e-4, atol=1e-3)
    assert (clamped >= 0).all()
    assert (raw > 0).all()  # this random tiny model's cosines all happen to be positive
    # torchmetrics' aggregate: max(mean of raw, 0)
    assert clip_score_mean(raw).item() == pytest.approx(max(raw.mean().item(), 0.0), abs=1e-5)
    assert clip_score_mean(torch.tensor([-5.0, -1.0])).item() == 0.0
    assert clip_score_mean(torch.tensor([30.0, 20.0])).item() == pytest.approx(25.0)


def test_clip_score_clamps_negative(clip_dirs, tmp_path):
    """Negating the text projection flips every cosine, so the two models together give both signs."""
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(clip_dirs[0])
    with torch.no_grad():
        model.text_projection.weight.neg_()
    model.save_pretrained(tmp_path)
    images = _images(4, seed=6)
    prompts = PROMPTS[:4]
    raw = load_clip_score(clip_dirs[0], processor_path=clip_dirs[1], clamp=False)(images, prompts)
    raw_neg = load_clip_score(str(tmp_path), processor_path=clip_dirs[1], clamp=False)(images, prompts)
    torch.testing.assert_close(raw_neg, -raw, rtol=1e-4, atol=1e-3)
    both = torch.cat([raw, raw_neg])
    assert (both < 0).any() and (both > 0).any()
    clamped = load_clip_score(clip_dirs[0], processor_path=clip_dirs[1])(images, prompts)
    clamped_neg = load_clip_score(str(tmp_path), processor_path=clip_dirs[1])(images, prompts)
    torch.testing.assert_close(torch.cat([clamped, clamped_neg]), both.clamp_min(0), rtol=1e-4, atol=1e-3)
    assert (clamped >= 0).all() and (clamped_neg >= 0).all()
    # all negative -> torchmetrics' aggregate is 0
    neg = torch.where(raw < 0, raw, raw_neg)
    assert (neg < 0).all() and clip_score_mean(neg).item() == 0.0
    # mixed signs: per-sample clamp vs torchmetrics' clamp of the mean differ
    mixed = torch.tensor([30.0, -50.0])
    assert clip_score_mean(mixed).item() == 0.0
    assert clip_score_mean(mixed.clamp_min(0)).item() == pytest.approx(15.0)


def test_clip_score_in_model_dir_processor(clip_dirs, tmp_path):
    """load_clip_score(model_path) alone: processor read from the model folder."""
    from transformers import CLIPModel, CLIPProcessor

    CLIPModel.from_pretrained(clip_dirs[0]).save_pretrained(tmp_path)
    CLIPProcessor.from_pretrained(clip_dirs[1]).save_pretrained(tmp_path)
    images = _images(2)
    a = load_clip_score(str(tmp_path), clamp=False)(images, PROMPTS[:2])
    b = load_clip_score(clip_dirs[0], processor_path=clip_dirs[1], clamp=False)(images, PROMPTS[:2])
    torch.testing.assert_close(a, b)


def _original_style_head(seed=0):
    torch.manual_seed(seed)
    head = AestheticMLP(input_size=PROJ)
    return {k: v.clone() for k, v in head.state_dict().items()}


def test_aesthetic_head_keys_match_original():
    keys = sorted(AestheticMLP(768).state_dict())
    expected = sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))
    assert keys == expected
    shapes = {k: tuple(v.shape) for k, v in AestheticMLP(768).state_dict().items() if k.endswith("weight")}
    assert shapes == {
        "layers.0.weight": (1024, 768),
        "layers.2.weight": (128, 1024),
        "layers.4.weight": (64, 128),
        "layers.6.weight": (16, 64),
        "layers.7.weight": (1, 16),
    }


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_aesthetic_matches_manual_mlp(clip_dirs, tmp_path, fmt):
    state = _original_style_head()
    path = tmp_path / f"head.{fmt}"
    if fmt == "pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    images = _images(5, seed=5)
    reward = load_aesthetic(clip_dirs[0], head_path=str(path), processor_path=clip_dirs[1], batch_size=2)
    assert reward.name == "aesthetic"
    scores = reward(images, PROMPTS)
    assert scores.shape == (5,) and scores.dtype == torch.float32
    # prompts are ignored
    torch.testing.assert_close(reward(images, ["x"] * 5), scores)
    torch.testing.assert_close(reward(images), scores)
    # manual: normalised image embedding -> five linear layers, no activations
    _, _, emb = _manual_cos(*clip_dirs, images, PROMPTS)
    x = emb
    for i in (0, 2, 4, 6, 7):
        x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    torch.testing.assert_close(scores, x.squeeze(-1), rtol=1e-4, atol=1e-5)
    # batching invariance
    torch.testing.assert_close(
        load_aesthetic(clip_dirs[0], head_path=str(path), processor_path=clip_dirs[1], batch_size=16)(images), scores,
        rtol=1e-4, atol=1e-5,
    )


def test_aesthetic_missing_head_and_dim_mismatch(clip_dirs, tmp_path):
    with pytest.raises(FileNotFoundError, match="sac\\+logos\\+ava1-l14-linearMSE.pth"):
        load_aesthetic(clip_dirs[0], head_path=str(tmp_path / "nope.pth"), processor_path=clip_dirs[1])
    torch.save(AestheticMLP(768).state_dict(), tmp_path / "h768.pth")
    with pytest.raises(ValueError, match="768"):
        load_aesthetic(clip_dirs[0], head_path=str(tmp_path / "h768.pth"), processor_path=clip_dirs[1])


def test_mismatched_lengths(clip_dirs):
    reward = load_pickscore(*clip_dirs)
    with pytest.raises(ValueError):
        reward(_images(2), ["one"])
    with pytest.raises(TypeError):
        reward(_images(1), "one")


def test_dtype_bfloat16_runs(clip_dirs):
    images = _images(3)
    reward = load_pickscore(*clip_dirs, dtype=torch.bfloat16)
    assert next(reward.model.parameters()).dtype == torch.bfloat16
    scores = reward(images, PROMPTS[:3])
    ref = load_pickscore(*clip_dirs)(images, PROMPTS[:3])
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, ref, rtol=0.05, atol=0.5)
