"""ImageReward: a tiny model of the real architecture, saved with the ORIGINAL checkpoint key names
(BLIP vit.py / med.py / ImageReward MLP), loaded through load_image_reward, checked against an
independent plain-torch forward written here from the original sources. No network."""

import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from t2i_align.evaluation.rewards import load_reward
from t2i_align.evaluation.rewards.image_reward import (
    CHECKPOINT_URL,
    TEXT_DEFAULTS,
    VISION_DEFAULTS,
    ImageRewardReward,
    image_reward_preprocess,
    load_image_reward,
    map_checkpoint_keys,
)

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
WORDS = "a an the photo of cat dog red blue green cube castle girl anime art concept painting on in with".split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
VOCAB_SIZE = len(VOCAB) + 2  # + [DEC] + [ENC]
D, DEPTH, PATCH, IMG = 32, 2, 32, 224  # tiny ViT
H, LAYERS, HEADS, INTER, MAXPOS = 32, 2, 2, 64, 512  # tiny BERT
VISION = dict(hidden_size=D, num_hidden_layers=DEPTH, num_attention_heads=2, intermediate_size=4 * D,
              image_size=IMG, patch_size=PATCH)
MED = dict(vocab_size=VOCAB_SIZE, hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
           intermediate_size=INTER, encoder_width=768, type_vocab_size=2)  # the last two are ignored, as in BLIP
PROMPTS = ["a red cube", "a photo of a cat", "an anime girl", "concept art of a castle", "dog"]


def _images():
    g = torch.Generator().manual_seed(0)
    out = []
    for w, h in [(224, 224), (300, 200), (150, 400), (64, 64), (512, 300)]:
        out.append(Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy(), "RGB"))
    return out


def _blip_state(seed=0):
    """Random weights under the original ImageReward.pt key names and shapes."""
    g = torch.Generator().manual_seed(seed)

    def lin(name, n_out, n_in):
        return {f"{name}.weight": torch.randn(n_out, n_in, generator=g) / math.sqrt(n_in),
                f"{name}.bias": 0.1 * torch.randn(n_out, generator=g)}

    def ln(name, n):
        return {f"{name}.weight": 1 + 0.1 * torch.randn(n, generator=g),
                f"{name}.bias": 0.1 * torch.randn(n, generator=g)}

    v, t = "blip.visual_encoder.", "blip.text_encoder."
    s = {v + "cls_token": torch.randn(1, 1, D, generator=g), v + "pos_embed": 0.5 * torch.randn(1, 50, D, generator=g),
         v + "patch_embed.proj.weight": torch.randn(D, 3, PATCH, PATCH, generator=g) / (PATCH * math.sqrt(3)),
         v + "patch_embed.proj.bias": 0.1 * torch.randn(D, generator=g)}
    for i in range(DEPTH):
        b = f"{v}blocks.{i}."
        s |= ln(b + "norm1", D) | lin(b + "attn.qkv", 3 * D, D) | lin(b + "attn.proj", D, D) | ln(b + "norm2", D)
        s |= lin(b + "mlp.fc1", 4 * D, D) | lin(b + "mlp.fc2", D, 4 * D)
    s |= ln(v + "norm", D)
    s |= {t + "embeddings.word_embeddings.weight": torch.randn(VOCAB_SIZE, H, generator=g),
          t + "embeddings.position_embeddings.weight": 0.5 * torch.randn(MAXPOS, H, generator=g),
          t + "embeddings.position_ids": torch.arange(MAXPOS).unsqueeze(0)}  # persistent buffer in med.py
    s |= ln(t + "embeddings.LayerNorm", H)
    for i in range(LAYERS):
        b = f"{t}encoder.layer.{i}."
        for att, kv_width in (("attention", H), ("crossattention", D)):
            s |= lin(b + att + ".self.query", H, H) | lin(b + att + ".self.key", H, kv_width)
            s |= lin(b + att + ".self.value", H, kv_width) | lin(b + att + ".output.dense", H, H)
            s |= ln(b + att + ".output.LayerNorm", H)
        s |= lin(b + "intermediate.dense", INTER, H) | lin(b + "output.dense", H, INTER) | ln(b + "output.LayerNorm", H)
    s |= lin("blip.vision_proj", 256, D) | lin("blip.text_proj", 256, H)  # in the file, unused by the score
    for idx, (n_out, n_in) in zip((0, 2, 4, 6, 7), ((1024, H), (128, 1024), (64, 128), (16, 64), (1, 16))):
        s |= lin(f"mlp.layers.{idx}", n_out, n_in)
    return s


def _mha(s, prefix, x, kv, n_heads, mask=None):
    """Multi-head attention from separate (med.py) or fused (vit.py 'qkv') projections."""
    if prefix + "qkv.weight" in s:
        q, k, v = F.linear(x, s[prefix + "qkv.weight"], s[prefix + "qkv.bias"]).chunk(3, dim=-1)
    else:
        q, k, v = (F.linear(y, s[f"{prefix}self.{n}.weight"], s[f"{prefix}self.{n}.bias"])
                   for n, y in (("query", x), ("key", kv), ("value", kv)))
    split = lambda y: y.view(y.shape[0], y.shape[1], n_heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    att = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        att = att + (1.0 - mask[:, None, None, :].to(att.dtype)) * -10000.0  # med.py's extended mask
    return (att.softmax(-1) @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)


def _reference_scores(s, pixels, input_ids, attention_mask):
    """ImageReward.score re-computed in float64 from the raw checkpoint (vit.py, med.py, MLP)."""
    s = {k: v.double() if v.is_floating_point() else v for k, v in s.items()}
    v, t = "blip.visual_encoder.", "blip.text_encoder."
    lnorm = lambda x, n, eps: F.layer_norm(x, x.shape[-1:], s[n + ".weight"], s[n + ".bias"], eps)  # noqa: E731
    x = F.conv2d(pixels.double(), s[v + "patch_embed.proj.weight"], s[v + "patch_embed.proj.bias"], stride=PATCH)
    x = torch.cat([s[v + "cls_token"].expand(x.shape[0], -1, -1), x.flatten(2).transpose(1, 2)], 1) + s[v + "pos_embed"]
    for i in range(DEPTH):
        b = f"{v}blocks.{i}."
        y = lnorm(x, b + "norm1", 1e-6)
        x = x + F.linear(_mha(s, b + "attn.", y, y, 2), s[b + "attn.proj.weight"], s[b + "attn.proj.bias"])
        y = F.gelu(F.linear(lnorm(x, b + "norm2", 1e-6), s[b + "mlp.fc1.weight"], s[b + "mlp.fc1.bias"]))
        x = x + F.linear(y, s[b + "mlp.fc2.weight"], s[b + "mlp.fc2.bias"])
    image = lnorm(x, v + "norm", 1e-6)
    h = s[t + "embeddings.word_embeddings.weight"][input_ids]
    h = h + s[t + "embeddings.position_embeddings.weight"][: input_ids.shape[1]]
    h = lnorm(h, t + "embeddings.LayerNorm", 1e-12)
    for i in range(LAYERS):
        b = f"{t}encoder.layer.{i}."
        for att, kv, mask in (("attention.", None, attention_mask), ("crossattention.", image, None)):
            ctx = _mha(s, b + att, h, h if kv is None else kv, HEADS, mask)
            ctx = F.linear(ctx, s[b + att + "output.dense.weight"], s[b + att + "output.dense.bias"])
            h = lnorm(ctx + h, b + att + "output.LayerNorm", 1e-12)
        y = F.gelu(F.linear(h, s[b + "intermediate.dense.weight"], s[b + "intermediate.dense.bias"]))
        y = F.linear(y, s[b + "output.dense.weight"], s[b + "output.dense.bias"])
        h = lnorm(y + h, b + "output.LayerNorm", 1e-12)
    r = h[:, 0]
    for idx in (0, 2, 4, 6, 7):  # dropouts at 1, 3, 5; no activations
        r = F.linear(r, s[f"mlp.layers.{idx}.weight"], s[f"mlp.layers.{idx}.bias"])
    return ((r.squeeze(-1) - 0.16717362830052426) / 1.0333394966054072).float()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("image_reward")
    (root / "tok").mkdir()
    (root / "tok" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    state = _blip_state()
    torch.save(state, root / "ImageReward.pt")
    kwargs = dict(checkpoint_path=str(root / "ImageReward.pt"), tokenizer_path=str(root / "tok"),
                  med_config=MED, vision_config=VISION)
    return state, kwargs


def _load(tiny, **over):
    return load_image_reward(**{**tiny[1], **over})


def test_scores_match_independent_forward(tiny):
    reward = _load(tiny, batch_size=2)
    assert isinstance(reward, ImageRewardReward) and reward.name == "image_reward"
    images = _images()
    scores = reward(images, PROMPTS)
    assert scores.dtype == torch.float32 and scores.shape == (5,) and scores.device.type == "cpu"
    tok = reward.tokenizer
    assert len(tok) == VOCAB_SIZE and tok.convert_ids_to_tokens([VOCAB_SIZE - 2, VOCAB_SIZE - 1]) == ["[DEC]", "[ENC]"]
    assert reward.enc_token_id == VOCAB_SIZE - 1
    assert reward.model.vision.config.layer_norm_eps == 1e-6 and reward.model.text.config.layer_norm_eps == 1e-12
    assert reward.model.text.config.encoder_hidden_size == D  # cross-attention reads the ViT width
    ids = tok(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert ids["input_ids"].shape == (5, 35) and (ids["input_ids"][:, 0] == VOCAB.index("[CLS]")).all()  # no [ENC]
    pixels = torch.stack([image_reward_preprocess(im) for im in images])
    expected = _reference_scores(tiny[0], pixels, ids["input_ids"], ids["attention_mask"])
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)
    assert scores.std() > 0.05  # the images / prompts actually change the score


@pytest.mark.parametrize("size", [(300, 200), (150, 400), (64, 64)])
def test_preprocess_shortest_side_bicubic_centre_crop(size):
    w, h = size
    g = torch.Generator().manual_seed(w + h)
    img = Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy(), "RGB")
    scale = 224 / min(w, h)  # shortest side -> 224, longest truncated as torchvision does
    nw, nh = (224, int(h * scale)) if w <= h else (int(w * scale), 224)
    left, top = round((nw - 224) / 2), round((nh - 224) / 2)
    ref = img.resize((nw, nh), resample=Image.BICUBIC).crop((left, top, left + 224, top + 224))
    t = torch.frombuffer(bytearray(ref.tobytes()), dtype=torch.uint8).view(224, 224, 3).permute(2, 0, 1).float() / 255
    ref = (t - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    out = image_reward_preprocess(img)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_batching_invariance_and_modes(tiny):
    images = _images()
    one, three = _load(tiny, batch_size=1), _load(tiny, batch_size=3)
    torch.testing.assert_close(one(images, PROMPTS), three(images, PROMPTS), rtol=1e-5, atol=1e-5)
    assert one([], []).shape == (0,)
    odd = [Image.new("RGBA", (100, 80), (10, 200, 30, 255)), Image.new("L", (90, 300), 128)]
    assert one(odd, PROMPTS[:2]).shape == (2,)
    with pytest.raises(ValueError):
        one(images, PROMPTS[:2])


def test_prompt_truncated_at_35_tokens(tiny):
    reward = _load(tiny)
    words = [WORDS[i % len(WORDS)] for i in range(50)]
    images = _images()[:1] * 4
    s = reward(images, [" ".join(words), " ".join(words[:33]), " ".join(words[:34]), " ".join(words[:32])])
    # [CLS] + 33 words + [SEP] = 35 tokens: everything after word 33 is cut
    torch.testing.assert_close(s[0], s[1])
    torch.testing.assert_close(s[2], s[1])
    assert not torch.isclose(s[3], s[1])


def test_key_mapping_and_strict_loading(tiny, tmp_path):
    state = tiny[0]
    mapped, unknown = map_checkpoint_keys(state)
    assert unknown == []
    proj = mapped["vision.encoder.layers.1.self_attn.projection.weight"]
    assert proj is state["blip.visual_encoder.blocks.1.attn.proj.weight"]
    assert mapped["vision.post_layernorm.bias"] is state["blip.visual_encoder.norm.bias"]
    assert mapped["text.encoder.layer.0.crossattention.self.key.weight"].shape == (H, D)
    assert not any(k.startswith(("blip.", "text.embeddings.position_ids")) for k in mapped)
    cases = {
        "renamed": ({k.replace("attn.qkv", "attn.qkvx"): v for k, v in state.items()},
                    "blip.visual_encoder.blocks.0.attn.qkvx.weight"),
        "missing": ({k: v for k, v in state.items() if k != "blip.visual_encoder.blocks.1.attn.proj.weight"},
                    "blip.visual_encoder.blocks.1.attn.proj.weight"),
        "extra": ({**state, "blip.itm_head.weight": torch.zeros(2, H)}, "blip.itm_head.weight"),
        "missing_mlp": ({k: v for k, v in state.items() if k != "mlp.layers.7.bias"}, "mlp.layers.7.bias"),
    }
    for name, (bad, key) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(bad, path)
        with pytest.raises(RuntimeError, match=key.replace(".", r"\.")):
            _load(tiny, checkpoint_path=str(path))
    with pytest.raises(RuntimeError):  # wrong architecture: shapes do not match
        _load(tiny, vision_config={**VISION, "hidden_size": 64})
    with pytest.raises(ValueError, match="num_layers"):
        _load(tiny, med_config={**MED, "num_layers": 2})


def test_default_sizes_are_imagereward_v1():
    assert VISION_DEFAULTS == dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                   intermediate_size=4096, image_size=224, patch_size=16, layer_norm_eps=1e-6,
                                   hidden_act="gelu")
    assert {k: TEXT_DEFAULTS[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                          "intermediate_size", "layer_norm_eps")} == dict(
        vocab_size=30524, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        layer_norm_eps=1e-12)


def test_missing_checkpoint_file(tmp_path, monkeypatch):
    missing = tmp_path / "nope" / "ImageReward.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_image_reward(checkpoint_path=str(missing))
    monkeypatch.setenv("T2I_ALIGN_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError) as err:
        load_image_reward()
    assert str(tmp_path / "cache" / "image_reward" / "ImageReward.pt") in str(err.value)
    assert CHECKPOINT_URL in str(err.value)


def test_registry_and_bfloat16(tiny):
    images, prompts = _images()[:3], PROMPTS[:3]
    ref = _load(tiny)(images, prompts)
    reward = load_reward("image_reward", **tiny[1])
    assert isinstance(reward, ImageRewardReward)
    torch.testing.assert_close(reward(images, prompts), ref)
    low = load_reward("image_reward", **tiny[1], dtype=torch.bfloat16)
    s = low(images, prompts)
    assert s.dtype == torch.float32 and low.model.mlp.layers[0].weight.dtype == torch.float32
    torch.testing.assert_close(s, ref, atol=0.1, rtol=0.05)
