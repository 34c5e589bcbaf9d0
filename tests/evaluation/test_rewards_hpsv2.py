"""HPSv2 reward: tiny open_clip model built in code, checkpoint saved to tmp_path, no network."""

import argparse

import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode, Normalize, ToTensor

from t2i_align.evaluation.rewards.checkpoint_io import PickleNotAllowedError

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


def _float_resize_norm(image, hw):
    """ToTensor first, then torchvision's bicubic antialiased resize on the float tensor, normalise."""
    t = TF.resize(ToTensor()(image), list(hw), InterpolationMode.BICUBIC, antialias=True)
    return Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)(t)


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
    cos = (img * txt).sum(-1)
    # the HPSv2 benchmark's number: 100 * cos (hpsv2/evaluation.py), not the bare cosine nor logit_scale * cos
    torch.testing.assert_close(scores, 100 * cos, rtol=1e-5, atol=1e-4)
    assert scores.abs().max() <= 100.0 + 1e-3 and scores.abs().max() > 1.0
    assert not torch.allclose(scores, model.logit_scale.exp() * cos, atol=1e-2)  # logit_scale = e^4 != 100
    assert "100 x cos" in reward.description and reward.name == "hpsv2.1"


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
    torch.testing.assert_close(s, ref, atol=5.0, rtol=0)  # 0.05 in cosine units


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
    torch.testing.assert_close(out[:, 56:168, :], _float_resize_norm(img, (112, 224)), rtol=0, atol=1e-6)
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
    torch.testing.assert_close(out[:, :, 74:149], _float_resize_norm(img, (224, 75)), rtol=0, atol=1e-6)


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


class _ResizeMaxSizeRef:
    """The HPSv2 repo's ResizeMaxSize (hpsv2/src/open_clip/transform.py) built from torchvision's own
    ops: on a [C, H, W] tensor, longest side -> max_size (bicubic), then F.pad with fill 0 centred."""

    def __init__(self, max_size=224):
        self.max_size = max_size

    def __call__(self, img):
        height, width = img.shape[1:]
        scale = self.max_size / float(max(height, width))
        if scale != 1.0:
            new_size = tuple(round(dim * scale) for dim in (height, width))
            img = TF.resize(img, list(new_size), InterpolationMode.BICUBIC, antialias=True)
            pad_h, pad_w = self.max_size - new_size[0], self.max_size - new_size[1]
            img = TF.pad(img, padding=[pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
        return img


@pytest.mark.parametrize("size", [(1024, 1024), (768, 512), (333, 517), (100, 50), (448, 224)])
def test_preprocess_matches_hpsv2_repo_transform(size):
    """Against the HPSv2 repo's preprocess_val order (image_transform(..., resize_longest_max=True) in
    hpsv2/src/open_clip/transform.py): convert RGB, ToTensor FIRST, ResizeMaxSize on the float tensor,
    Normalize -- composed here from torchvision's ops. The older uint8 PIL resize is a different
    transform, and this test tells them apart."""
    from torchvision.transforms import Compose

    w, h = size
    g = torch.Generator().manual_seed(w * 7 + h)
    img = Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy(), "RGB")
    official = Compose([lambda im: im.convert("RGB"), ToTensor(), _ResizeMaxSizeRef(224),
                        Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])
    ref = official(img)
    out = hps_preprocess(img)
    assert out.shape == ref.shape == (3, 224, 224)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)

    # the old implementation: PIL bicubic resize of the uint8 image, then pad, then ToTensor
    scale = 224 / float(max(h, w))
    new_h, new_w = (round(d * scale) for d in (h, w))
    ph, pw = 224 - new_h, 224 - new_w
    pil = TF.pad(img.resize((new_w, new_h), resample=Image.BICUBIC),
                 padding=[pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0)
    pil = Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)(ToTensor()(pil))
    diff = (out - pil).abs().max().item()
    assert diff > 5e-3, f"float-tensor resize should differ from the uint8 PIL resize (max diff {diff})"
    assert diff < 2.0  # ... but only slightly: same geometry, same padding


def test_pickled_checkpoint_needs_opt_in_naming_it(tiny_ckpt, tmp_path):
    """A torch file holding a Python object (as some released checkpoints do) is never unpickled on
    its own: refused with the file's name and the opt-in; allow_pickle=<that file> loads it."""
    _, model = tiny_ckpt
    path = tmp_path / "HPS_with_args.pt"
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(lr=1e-5, precision="amp")}, path)
    with pytest.raises(PickleNotAllowedError) as err:
        load_hpsv2(str(path), model_config=TINY_CFG)
    message = str(err.value)
    assert str(path) in message and "allow_pickle=" in message and "argparse.Namespace" in message
    assert "\n" not in message
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(PickleNotAllowedError):
        load_hpsv2(str(path), model_config=TINY_CFG, allow_pickle=str(other))
    with pytest.raises(TypeError):
        load_hpsv2(str(path), model_config=TINY_CFG, allow_pickle=True)
    reward = load_hpsv2(str(path), model_config=TINY_CFG, allow_pickle=str(path))
    ref = load_hpsv2(str(tiny_ckpt[0]), model_config=TINY_CFG)
    torch.testing.assert_close(reward(_images(2), PROMPTS[:2]), ref(_images(2), PROMPTS[:2]))
