"""HPSv2 reward: tiny open_clip model built in code, checkpoint saved to tmp_path, no network."""

import pytest
import torch
from PIL import Image

from t2i_align.evaluation.rewards.hpsv2 import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    HPSv2Reward,
    hps_preprocess,
    load_hpsv2,
)

TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
PROMPTS = ["a red cube", "a photo of a cat", "an anime girl", "concept art of a castle", "x"]


def _images(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = [(224, 224), (448, 224), (160, 320), (64, 64), (300, 200)]
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        arr = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
        out.append(Image.fromarray(arr, "RGB"))
    return out


def _pil_to_norm(image):
    t = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    t = t.view(image.size[1], image.size[0], 3).permute(2, 0, 1).float() / 255
    return (t - torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)) / torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    import open_clip

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CFG).eval()
    # make the text/image towers non-trivial and logit_scale distinctive (must NOT enter the score)
    with torch.no_grad():
        model.logit_scale.fill_(4.0)
    path = tmp_path_factory.mktemp("hps") / "HPS_tiny.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path, model


@pytest.fixture(scope="module")
def reward(tiny_ckpt):
    return load_hpsv2(str(tiny_ckpt[0]), version="v2.1", model_config=TINY_CFG, batch_size=2)


def test_score_matches_manual_cosine(tiny_ckpt, reward):
    _, model = tiny_ckpt
    images = _images()
    scores = reward(images, PROMPTS)
    assert scores.dtype == torch.float32 and scores.shape == (5,) and scores.device.type == "cpu"
    import open_clip

    tok = open_clip.get_tokenizer("ViT-H-14")
    with torch.no_grad():
        img = model.encode_image(torch.stack([hps_preprocess(im) for im in images]))
        txt = model.encode_text(tok(PROMPTS))
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    expected = (img * txt).sum(-1)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    assert scores.abs().max() <= 1.0 + 1e-5  # a cosine, not logit_scale * cos or 100 * cos


def test_batching_invariance(tiny_ckpt, reward):
    images = _images()
    ref = reward(images, PROMPTS)
    for bs in (1, 3, 16):
        r = load_hpsv2(str(tiny_ckpt[0]), model_config=TINY_CFG, batch_size=bs)
        torch.testing.assert_close(r(images, PROMPTS), ref, rtol=1e-5, atol=1e-5)
    # per-item scores do not depend on the batch they are in
    torch.testing.assert_close(reward(images[1:3], PROMPTS[1:3]), ref[1:3], rtol=1e-5, atol=1e-5)
    assert reward([], []).shape == (0,)
    with pytest.raises(ValueError):
        reward(images, PROMPTS[:2])


def test_version_name_and_checkpoint_formats(tiny_ckpt, tmp_path):
    path, model = tiny_ckpt
    assert load_hpsv2(str(path), version="v2", model_config=TINY_CFG).name == "hpsv2"
    assert load_hpsv2(str(path), version="v2.1", model_config=TINY_CFG).name == "hpsv2.1"
    with pytest.raises(ValueError):
        load_hpsv2(str(path), version="v3", model_config=TINY_CFG)
    images, prompts = _images(2), PROMPTS[:2]
    ref = load_hpsv2(str(path), model_config=TINY_CFG)(images, prompts)
    # bare state dict with a DDP 'module.' prefix
    bare = tmp_path / "bare.pt"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, bare)
    torch.testing.assert_close(load_hpsv2(str(bare), model_config=TINY_CFG)(images, prompts), ref)
    # safetensors
    from safetensors.torch import save_file

    st = tmp_path / "hps.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
    torch.testing.assert_close(load_hpsv2(str(st), model_config=TINY_CFG)(images, prompts), ref)
    # a wrong architecture fails loudly
    bad = dict(TINY_CFG, embed_dim=8)
    with pytest.raises(RuntimeError):
        load_hpsv2(str(path), model_config=bad)


def test_dtype_bfloat16_runs(tiny_ckpt):
    r = load_hpsv2(str(tiny_ckpt[0]), model_config=TINY_CFG, dtype=torch.bfloat16)
    s = r(_images(2), PROMPTS[:2])
    assert s.dtype == torch.float32 and s.shape == (2,)
    ref = load_hpsv2(str(tiny_ckpt[0]), model_config=TINY_CFG)(_images(2), PROMPTS[:2])
    torch.testing.assert_close(s, ref, atol=0.05, rtol=0)


def test_preprocess_wide_image_pads_top_bottom():
    g = torch.Generator().manual_seed(1)
    arr = torch.randint(1, 256, (224, 448, 3), generator=g, dtype=torch.uint8).numpy()
    img = Image.fromarray(arr, "RGB")
    out = hps_preprocess(img, 224)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    black = (-torch.tensor(OPENAI_CLIP_MEAN) / torch.tensor(OPENAI_CLIP_STD)).view(3, 1, 1)
    # 448x224 -> 224x112, 112 rows of padding: 56 on top, 56 at the bottom
    torch.testing.assert_close(out[:, :56, :], black.expand(3, 56, 224))
    torch.testing.assert_close(out[:, 168:, :], black.expand(3, 56, 224))
    resized = img.resize((224, 112), resample=Image.BICUBIC)
    torch.testing.assert_close(out[:, 56:168, :], _pil_to_norm(resized))
    assert not torch.allclose(out[:, 56, :], black[:, 0, :].expand(3, 224))


def test_preprocess_tall_image_pads_left_right():
    g = torch.Generator().manual_seed(2)
    arr = torch.randint(1, 256, (300, 100, 3), generator=g, dtype=torch.uint8).numpy()
    img = Image.fromarray(arr, "RGB")
    out = hps_preprocess(img, 224)
    # 100x300 -> round(100 * 224 / 300) = 75 wide, 149 columns of padding: 74 left, 75 right
    black = (-torch.tensor(OPENAI_CLIP_MEAN) / torch.tensor(OPENAI_CLIP_STD)).view(3, 1, 1)
    torch.testing.assert_close(out[:, :, :74], black.expand(3, 224, 74))
    torch.testing.assert_close(out[:, :, 149:], black.expand(3, 224, 75))
    resized = img.resize((75, 224), resample=Image.BICUBIC)
    torch.testing.assert_close(out[:, :, 74:149], _pil_to_norm(resized))


def test_preprocess_square_and_small_sizes():
    img = Image.new("RGB", (512, 512), (255, 255, 255))
    out = hps_preprocess(img, 224)
    white = ((1 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)).view(3, 1, 1)
    torch.testing.assert_close(out, white.expand(3, 224, 224))
    # small images are upscaled (longest side -> size), RGBA / L converted to RGB
    assert hps_preprocess(Image.new("RGBA", (10, 20)), 64).shape == (3, 64, 64)
    assert hps_preprocess(Image.new("L", (30, 10)), 32).shape == (3, 32, 32)


def test_reward_uses_model_image_size(tmp_path):
    import open_clip

    cfg = {**TINY_CFG, "vision_cfg": {**TINY_CFG["vision_cfg"], "image_size": 64, "patch_size": 16}}
    model = open_clip.CLIP(**cfg).eval()
    p = tmp_path / "small.pt"
    torch.save({"state_dict": model.state_dict()}, p)
    r = load_hpsv2(str(p), model_config=cfg)
    assert isinstance(r, HPSv2Reward) and r.image_size == 64
    assert r(_images(3), PROMPTS[:3]).shape == (3,)


@pytest.mark.parametrize("size", [(1024, 1024), (768, 512), (333, 517), (100, 50), (448, 224)])
def test_preprocess_matches_hpsv2_repo_transform(size):
    """Bit-exact against the HPSv2 repo's preprocess_val (open_clip 2.x ResizeMaxSize + pad 0,
    _convert_to_rgb, ToTensor, Normalize), re-expressed with torchvision."""
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode, Normalize, ToTensor

    w, h = size
    g = torch.Generator().manual_seed(w * 7 + h)
    img = Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy(), "RGB")
    scale = 224 / float(max(h, w))
    new_size = tuple(round(d * scale) for d in (h, w))
    ref = F.resize(img, new_size, InterpolationMode.BICUBIC)
    ph, pw = 224 - new_size[0], 224 - new_size[1]
    ref = F.pad(ref, padding=[pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0).convert("RGB")
    ref = Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)(ToTensor()(ref))
    torch.testing.assert_close(hps_preprocess(img), ref, rtol=0, atol=1e-6)
