"""HPSv3 reward on a tiny Qwen2-VL built in code (transformers' own classes), saved as a base-model
folder (config + tokenizer + image processor + chat template) and a released-layout checkpoint."""

import argparse
import hashlib

import pytest
import torch
from PIL import Image
from torch import nn

from t2i_align.evaluation.rewards import load_reward
from t2i_align.evaluation.rewards.checkpoint_io import PickleNotAllowedError
from t2i_align.evaluation.rewards.hpsv3 import (
    HPSV3_PIXELS,
    INSTRUCTION,
    PROMPT_WITH_SPECIAL_TOKEN,
    hpsv3_resize,
    load_hpsv3,
    smart_resize,
)

# Qwen2-VL's added tokens (ids 151643.. in the real tokenizer), in their order
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
            "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
            "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
# Qwen2-VL-7B-Instruct's chat template (chat_template.json of the hub repo)
QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
PIXELS = 4 * 28 * 28  # tiny: 56 x 56 for square images (the real reward uses 256 * 28 * 28)
PROMPTS = ["a red cube", "concept art of a castle on a hill at night, very detailed", "x",
           "a photo of a cat"]
SIZES = [(64, 64), (40, 80), (90, 30), (200, 200)]  # (w, h)
# what qwen-vl-utils 0.0.8's smart_resize(h, w, 28, PIXELS, PIXELS) gives for SIZES: (w, h)
RESIZED = [(56, 56), (56, 84), (112, 56), (56, 56)]


def _images():
    g = torch.Generator().manual_seed(0)
    return [Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy(), "RGB")
            for w, h in SIZES]


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    tok.train_from_iterator([INSTRUCTION, PROMPT_WITH_SPECIAL_TOKEN, "You are a helpful assistant.", *PROMPTS],
                            trainer)
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _config(tokenizer, vocab_size):
    from transformers import Qwen2VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    return Qwen2VLConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6},
                         bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=None),
        vision_config=dict(depth=2, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def _released_key(key):
    """transformers 5.x Qwen2VLForConditionalGeneration key -> the 4.45 name the released file uses."""
    if key.startswith("model.visual."):
        return "visual." + key[len("model.visual."):]
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    return key


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from safetensors.torch import save_file
    from transformers import (Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor,
                              Qwen2VLVideoProcessor)

    root = tmp_path_factory.mktemp("hpsv3")
    base = root / "Qwen2-VL-tiny"
    tokenizer = _tokenizer()
    n_base = len(tokenizer)
    # the real base config has more embedding rows than tokens (152064 vs 151657); the loader resizes
    _config(tokenizer, vocab_size=n_base + 40).save_pretrained(base)
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=28 * 28 * 64)
    Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
                     chat_template=QWEN2VL_CHAT_TEMPLATE).save_pretrained(base)

    # the reference reward model, as train.py makes it: <|Reward|> added, embeddings = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|Reward|>"]})
    reward_id = tokenizer.convert_tokens_to_ids("<|Reward|>")
    assert reward_id == n_base
    torch.manual_seed(0)
    ref = Qwen2VLForConditionalGeneration(_config(tokenizer, vocab_size=len(tokenizer))).eval()
    head = nn.Sequential(nn.Linear(32, 1024), nn.ReLU(), nn.Dropout(0.05), nn.Linear(1024, 16), nn.ReLU(),
                         nn.Linear(16, 2)).eval()
    with torch.no_grad():
        for p in ref.parameters():  # livelier than the 0.02-std init, so positions and pixels matter
            p.add_(torch.randn_like(p) * 0.05)
        for p in head.parameters():
            p.mul_(3.0)
    state = {_released_key(k): v.contiguous() for k, v in ref.state_dict().items()}
    state.update({f"rm_head.{k}": v.contiguous() for k, v in head.state_dict().items()})
    ckpt = root / "HPSv3.safetensors"
    save_file(state, str(ckpt))
    return dict(root=root, base=str(base), ckpt=str(ckpt), ref=ref, head=head, state=state, reward_id=reward_id,
                tokenizer=tokenizer)


@pytest.fixture(scope="module")
def reward(tiny):
    return load_hpsv3(tiny["ckpt"], base_model=tiny["base"], dtype=torch.float32, batch_size=4, pixels=PIXELS)


def _expected_text(prompt):
    """The rendered prompt, written out from Qwen2-VL's template and HPSv3's instruction."""
    return ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|><|image_pad|><|vision_end|>" + INSTRUCTION.replace("{text_prompt}", prompt)
            + "\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n<|im_end|>\n"
            "<|im_start|>assistant\n")


@torch.no_grad()
def _independent_scores(tiny, images, prompts, processor, mrope=False):
    """HPSv3's released forward (qwen2vl_trainer.py), written out on the reference model: embed tokens,
    scatter the vision tower's merged tokens into the <|image_pad|> slots, run the decoder with
    position_ids=None (0..L-1), apply the head in float32 at the <|Reward|> token; mu = column 0."""
    ref, head = tiny["ref"], tiny["head"]
    resized = [im.convert("RGB").resize(size, resample=Image.BICUBIC) for im, size in zip(images, RESIZED)]
    batch = processor(text=[_expected_text(p) for p in prompts], images=resized, padding=True, return_tensors="pt")
    ids = batch["input_ids"]
    if mrope:  # Qwen2-VL's own 3-D positions: what HPSv3 does NOT do
        hidden = ref.model(**batch).last_hidden_state
    else:
        lm, visual = ref.model.language_model, ref.model.visual
        embeds = lm.embed_tokens(ids)
        image_embeds = visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
        mask = (ids == ref.config.image_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(mask, image_embeds.to(embeds.dtype))
        hidden = lm(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).last_hidden_state
    logits = head(hidden.float())
    return logits[ids == tiny["reward_id"]].view(len(prompts), -1), batch


def test_template_text_is_the_released_one():
    """Load-bearing bytes of hpsv3/dataset/data_collator_qwen.py's INSTRUCTION / prompt_with_special_token."""
    assert INSTRUCTION.startswith("\nYou are tasked with evaluating a generated image based on Visual Quality and "
                                  "Text Alignment and give a overall score to estimate the human preference. ")
    assert "with 0 being the worst and 10 being the best. \n\n**Visual Quality:**  \n" in INSTRUCTION
    assert "should be the lowest possible. \n\n**Text Alignment:**  \n" in INSTRUCTION
    assert "- **Subject Relevance** Evaluate" in INSTRUCTION and "- **Contextual Consistency**: Assess" in INSTRUCTION
    assert INSTRUCTION.endswith("distort the original description.\nTextual prompt - {text_prompt}\n\n\n")
    assert INSTRUCTION.count("{") == 1 and len(INSTRUCTION) == 2523
    # sha256 of the text as two independent vendored copies of data_collator_qwen.py spell it
    assert hashlib.sha256(INSTRUCTION.encode()).hexdigest() == "0393599dad45a971903d1d62a3acf9bad3ccccdafa7f40f680523419e1f68b7a"
    assert PROMPT_WITH_SPECIAL_TOKEN == "\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"
    assert HPSV3_PIXELS == 200704


@pytest.mark.parametrize("wh,expected", [
    ((1024, 1024), (448, 448)),   # square: exactly 256 * 28 * 28
    ((512, 512), (448, 448)),
    ((64, 64), (448, 448)),       # upscaled (ceil branch)
    ((256, 1024), (224, 896)),    # 1:4 also fits exactly (8 x 32 merged tokens)
    ((1024, 512), (616, 308)),    # 2:1 cannot: nearest grid below
    ((100, 50), (644, 336)),      # ... or above when upscaling
    # float rounding in qwen-vl-utils: 768 / (768 / 448) = 447.99... floors to 420; the released
    # reward saw 420 x 420 for 768 x 768 images, so this is kept, not "fixed"
    ((768, 768), (420, 420)),
])
def test_smart_resize_gives_the_configured_pixels(wh, expected):
    w, h = wh
    out_h, out_w = smart_resize(h, w)
    assert (out_w, out_h) == expected
    assert out_h % 28 == 0 and out_w % 28 == 0
    area = out_h * out_w
    if wh == (768, 768):
        assert area < HPSV3_PIXELS
    elif expected[0] == expected[1] or 4 * min(expected) == max(expected):
        assert area == 256 * 28 * 28
    elif h * w > HPSV3_PIXELS:
        assert area <= HPSV3_PIXELS
    else:
        assert area >= HPSV3_PIXELS
    img = Image.new("RGBA", (w, h), (10, 20, 30, 0))
    resized = hpsv3_resize(img)
    assert resized.size == expected and resized.mode == "RGB"
    with pytest.raises(ValueError):
        smart_resize(10, 2100)  # aspect ratio above 200


def test_smart_resize_matches_qwen_vl_utils():
    """Against the package itself when it is installed (it is not a dependency)."""
    qwen = pytest.importorskip("qwen_vl_utils.vision_process")
    g = torch.Generator().manual_seed(0)
    for _ in range(2000):
        w, h = (int(v) for v in torch.randint(20, 3000, (2,), generator=g))
        for pixels in (HPSV3_PIXELS, PIXELS):
            assert smart_resize(h, w, 28, pixels, pixels) == qwen.smart_resize(h, w, 28, pixels, pixels)


def test_resize_is_pil_bicubic():
    img = _images()[3]
    torch.testing.assert_close(torch.tensor(list(hpsv3_resize(img, PIXELS).getdata())),
                               torch.tensor(list(img.resize((56, 56), Image.BICUBIC).getdata())), rtol=0, atol=0)
    assert hpsv3_resize(img, PIXELS).tobytes() != img.resize((56, 56), Image.BILINEAR).tobytes()


def test_score_equals_independent_forward(tiny, reward):
    images = _images()
    scores = reward(images, PROMPTS)
    assert scores.dtype == torch.float32 and scores.shape == (4,) and scores.device.type == "cpu"
    expected, batch = _independent_scores(tiny, images, PROMPTS, reward.processor)
    mu_sigma = reward.predict(images, PROMPTS)
    torch.testing.assert_close(mu_sigma, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scores, expected[:, 0], rtol=1e-4, atol=1e-5)
    assert scores.std() > 1e-3  # the scores depend on the pairs
    # our prompt and our images are the ones written out above, token for token
    ours = reward.prepare(images, PROMPTS)
    assert torch.equal(ours["input_ids"], batch["input_ids"])
    assert torch.equal(ours["image_grid_thw"], torch.tensor([[1, h // 14, w // 14] for w, h in RESIZED]))
    # the image area is the configured one (4 merged tokens for square images)
    assert [int(t.prod()) // 4 for t in ours["image_grid_thw"]] == [w * h // 784 for w, h in RESIZED]
    # Qwen2-VL's 3-D M-RoPE positions give other scores: the test would notice a switch to them
    mrope, _ = _independent_scores(tiny, images, PROMPTS, reward.processor, mrope=True)
    assert (mrope[:, 0] - scores).abs().max() > 1e-3


def test_right_padded_batch_equals_single_items(tiny, reward):
    images = _images()
    batch = reward.prepare(images, PROMPTS)
    mask = batch["attention_mask"]
    assert (mask == 0).any()  # prompts of different lengths: padding happened
    for row in mask:  # right padding: ones, then zeros
        n = int(row.sum())
        assert row[:n].all() and not row[n:].any()
    full = reward(images, PROMPTS)
    single = load_hpsv3(tiny["ckpt"], base_model=tiny["base"], dtype=torch.float32, batch_size=1, pixels=PIXELS)
    torch.testing.assert_close(single(images, PROMPTS), full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(reward(images[1:3], PROMPTS[1:3]), full[1:3], rtol=1e-4, atol=1e-5)
    assert reward([], []).shape == (0,)
    with pytest.raises(ValueError):
        reward(images, PROMPTS[:2])


def test_strict_loading_names_the_key(tiny, tmp_path):
    from safetensors.torch import save_file

    state = dict(tiny["state"])
    for key in ("visual.blocks.0.attn.qkv.weight", "model.layers.1.self_attn.q_proj.weight",
                "model.embed_tokens.weight", "lm_head.weight", "rm_head.0.weight", "rm_head.3.bias",
                "rm_head.5.weight"):
        assert key in state  # the released (transformers 4.45) names

    def load(sd, name):
        path = tmp_path / name
        save_file(sd, str(path))
        return load_hpsv3(str(path), base_model=tiny["base"], dtype=torch.float32, pixels=PIXELS)

    missing = {k: v for k, v in state.items() if k != "rm_head.5.weight"}
    with pytest.raises(RuntimeError, match=r"missing keys \['rm_head\.5\.weight'\]"):
        load(missing, "missing.safetensors")
    missing = {k: v for k, v in state.items() if k != "visual.merger.ln_q.bias"}
    with pytest.raises(RuntimeError, match=r"missing keys \['visual\.merger\.ln_q\.bias'\]"):
        load(missing, "missing_visual.safetensors")
    extra = dict(state, **{"rm_head.7.weight": torch.zeros(2, 2), "score.weight": torch.zeros(1),
                           "visual.blocks.9.norm1.weight": torch.zeros(16)})
    with pytest.raises(RuntimeError, match=r"unexpected keys \['rm_head\.7\.weight', 'score\.weight', "
                                           r"'visual\.blocks\.9\.norm1\.weight'\]"):
        load(extra, "extra.safetensors")
    rows = dict(state, **{"model.embed_tokens.weight": state["model.embed_tokens.weight"][:-1].contiguous()})
    with pytest.raises(RuntimeError, match="model.embed_tokens.weight"):
        load(rows, "rows.safetensors")
    # the transformers >= 4.52 layout maps onto the same model; lm_head is optional (unused)
    new = {("model." + k if k.startswith("visual.") else
            "model.language_model." + k[len("model."):] if k.startswith("model.") else k): v
           for k, v in state.items() if k != "lm_head.weight"}
    images = _images()[:2]
    torch.testing.assert_close(load(new, "new_layout.safetensors")(images, PROMPTS[:2]),
                               load(state, "same.safetensors")(images, PROMPTS[:2]))
    both = dict(state, **{"model.visual.merger.ln_q.bias": state["visual.merger.ln_q.bias"].clone()})
    with pytest.raises(RuntimeError, match="unexpected keys"):
        load(both, "both.safetensors")


def test_torch_checkpoint_with_pickle_needs_opt_in(tiny, tmp_path):
    path = tmp_path / "HPSv3_7B.pth"
    torch.save({"model": tiny["state"], "args": argparse.Namespace(lr=2e-6)}, path)
    with pytest.raises(PickleNotAllowedError, match="HPSv3_7B.pth"):
        load_hpsv3(str(path), base_model=tiny["base"], dtype=torch.float32, pixels=PIXELS)
    with pytest.raises(PickleNotAllowedError):
        load_hpsv3(str(path), base_model=tiny["base"], dtype=torch.float32, pixels=PIXELS,
                   allow_pickle=tiny["ckpt"])
    r = load_hpsv3(str(path), base_model=tiny["base"], dtype=torch.float32, pixels=PIXELS, allow_pickle=str(path))
    assert r(_images()[:1], PROMPTS[:1]).shape == (1,)


def test_registry_bfloat16_and_missing_file(tiny, reward, tmp_path):
    r = load_reward("hpsv3", checkpoint=tiny["ckpt"], base_model=tiny["base"], pixels=PIXELS, dtype="bfloat16")
    assert r.name == "hpsv3" and "mu" in r.description
    assert next(r.model.model.parameters()).dtype == torch.bfloat16
    assert r.model.rm_head[0].weight.dtype == torch.float32  # the head stays float32, as released
    torch.testing.assert_close(r(_images(), PROMPTS), reward(_images(), PROMPTS), atol=0.1, rtol=0.05)
    with pytest.raises(FileNotFoundError, match="MizzenAI/HPSv3"):
        load_hpsv3(str(tmp_path / "nope.safetensors"), base_model=tiny["base"])
    with pytest.raises(ValueError, match="exactly one <|Reward|>"):
        reward(_images()[:1], ["a prompt that says <|Reward|> itself"])
