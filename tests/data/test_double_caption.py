"""DCPO Pick-Double-Caption strategies (t2i_align.data.builders.double_caption).

Tiny random models (BLIP, LLaVA, T5) are built in code with offline word-level tokenizers, saved
with save_pretrained and loaded through load_captioner / load_paraphraser. Their text is
gibberish: the tests check structure, image order, prompt / instruction plumbing and determinism.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from t2i_align.data.builders import double_caption as dc
from t2i_align.data.builders.double_caption import (
    DIPPER_TEMPLATES, INSTRUCTION_TEMPLATES, LEVELS, SAMPLING, STRATEGIES, double_captions, load_captioner,
    load_paraphraser)

PROMPTS = ["a red circle", "a blue square on a grey background", "a green triangle"]
LLAVA_CHAT = ("{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
              "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }}{% endif %}{% endfor %} "
              "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def _word_vocab(texts, specials) -> dict:
    from tokenizers import pre_tokenizers

    splitter = pre_tokenizers.Whitespace()
    words = sorted({w for t in texts for w, _ in splitter.pre_tokenize_str(t)} - set(specials))
    return {w: i for i, w in enumerate(list(specials) + words)}


def _fast_tokenizer(vocab: dict, template: str | None = None, **special):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if template:
        tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", **special)


def _images():
    return [Image.new("RGB", (40, 40), (230, 30, 30)), Image.new("RGB", (48, 40), (30, 80, 235)),
            Image.new("L", (40, 40), 128)]


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder = tmp_path_factory.mktemp("tiny_blip")
    words = sorted(set(" ".join(PROMPTS + ["a picture of photo cat dog"]).split()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + words
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    config = BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64, bos_token_id=5, sep_token_id=3,
                         pad_token_id=0, eos_token_id=3),
        vision_config=dict(hidden_size=16, image_size=32, patch_size=8, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32),
        projection_dim=16)
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    folder = tmp_path_factory.mktemp("tiny_llava")
    vocab = _word_vocab(PROMPTS + [dc.CHAT_INSTRUCTION, "USER: ASSISTANT:"],
                        ["<pad>", "<s>", "</s>", "<unk>", "<image>"])
    tokenizer = _fast_tokenizer(vocab, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                extra_special_tokens={"image_token": "<image>"})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default", chat_template=LLAVA_CHAT,
        num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=16, patch_size=8),
        text_config=dict(model_type="llama", vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        image_token_index=vocab["<image>"], vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    from transformers import T5Config, T5ForConditionalGeneration

    folder = tmp_path_factory.mktemp("tiny_t5")
    texts = [t.replace("{text}", "") for t in [*INSTRUCTION_TEMPLATES.values(), *DIPPER_TEMPLATES.values()]]
    vocab = _word_vocab(texts + PROMPTS + ["paraphrase this"], ["<pad>", "</s>", "<unk>"])
    _fast_tokenizer(vocab, "$A </s>", pad_token="<pad>", eos_token="</s>").save_pretrained(folder)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(vocab), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    return folder


def _spy_generate(monkeypatch, model) -> list[dict]:
    """Record each generate call's keyword inputs and its output on ``model``."""
    calls, original = [], model.generate

    def spy(**kwargs):
        out = original(**kwargs)
        calls.append({**kwargs, "out": out})
        return out

    monkeypatch.setattr(model, "generate", spy)
    return calls


# ----------------------------------------------------------------------------- captioner


def test_constants():
    assert STRATEGIES == ("captioning", "perturbation", "hybrid")
    assert LEVELS == ("weak", "medium", "strong")
    assert set(INSTRUCTION_TEMPLATES) == set(DIPPER_TEMPLATES) == set(SAMPLING) == set(LEVELS)
    assert all("{text}" in t for t in [*INSTRUCTION_TEMPLATES.values(), *DIPPER_TEMPLATES.values()])


def test_blip_captioner_strips_prefix_and_is_deterministic(blip_dir, monkeypatch):
    captioner = load_captioner(str(blip_dir), max_new_tokens=6)
    assert not captioner.chat and captioner.prompt_template == dc.BLIP_PREFIX
    calls = _spy_generate(monkeypatch, captioner.model)
    captions = captioner(_images(), PROMPTS)
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    assert len(calls) == 1  # one shared prefix: one batch
    tokenizer = captioner.processor.tokenizer
    for raw, caption in zip(tokenizer.batch_decode(calls[0]["out"], skip_special_tokens=True), captions):
        assert raw.startswith(dc.BLIP_PREFIX) and raw[len(dc.BLIP_PREFIX):].strip() == caption
    assert captioner(_images(), PROMPTS) == captions


def test_blip_prompt_conditioning_batches_by_prefix(blip_dir, monkeypatch):
    captioner = load_captioner(str(blip_dir), max_new_tokens=5, prompt_template="a picture of {prompt}",
                               batch_size=2)
    images, prompts = _images() * 2, PROMPTS + PROMPTS[::-1]
    alone = [captioner([im], [p]) [0] for im, p in zip(images, prompts)]
    calls = _spy_generate(monkeypatch, captioner.model)
    captions = captioner(images, prompts)
    assert captions == alone  # order kept across the prefix groups
    assert len(calls) == 3  # three distinct prefixes, two items each (batch_size 2)
    tokenizer = captioner.processor.tokenizer
    fed = {tokenizer.decode(c["input_ids"][0], skip_special_tokens=True) for c in calls}
    assert fed == {f"a picture of {p}" for p in PROMPTS}
    assert all(len(set(tokenizer.batch_decode(c["input_ids"]))) == 1 for c in calls)


def test_chat_vlm_captioner_fills_prompt_and_decodes_only_new_tokens(llava_dir, monkeypatch):
    captioner = load_captioner(str(llava_dir), max_new_tokens=4)
    assert captioner.chat and captioner.prompt_template == dc.CHAT_INSTRUCTION
    calls = _spy_generate(monkeypatch, captioner.model)
    captions = captioner(_images(), PROMPTS)
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    (call,) = calls
    tokenizer = captioner.processor.tokenizer
    width = call["input_ids"].shape[1]
    assert torch.equal(call["out"][:, :width], call["input_ids"])  # the echoed prompt ...
    assert tokenizer.batch_decode(call["out"][:, width:], skip_special_tokens=True) == captions  # ... is cut
    fed = tokenizer.batch_decode(call["input_ids"], skip_special_tokens=True)
    assert all(p in text and "ASSISTANT" in text for p, text in zip(PROMPTS, fed))
    assert captioner(_images(), PROMPTS) == captions


def test_captioner_length_mismatch(blip_dir):
    with pytest.raises(ValueError, match="2 images but 3 prompts"):
        load_captioner(str(blip_dir))(_images()[:2], PROMPTS)


# ----------------------------------------------------------------------------- paraphraser


def test_paraphraser_deterministic_per_seed(t5_dir):
    para = load_paraphraser(str(t5_dir), max_new_tokens=8)
    for level in LEVELS:
        out = para(PROMPTS, level, seed=0)
        assert len(out) == 3 and all(isinstance(t, str) for t in out)
        assert para(PROMPTS, level, seed=0) == out
    again = load_paraphraser(str(t5_dir), max_new_tokens=8)
    assert again(PROMPTS, "strong", seed=3) == para(PROMPTS, "strong", seed=3)
    assert any(para(PROMPTS, "strong", seed=s) != para(PROMPTS, "strong", seed=0) for s in (1, 2, 3))


def test_paraphraser_leaves_global_rng_alone(t5_dir):
    para = load_paraphraser(str(t5_dir), max_new_tokens=4)
    state = torch.random.get_rng_state()
    para(PROMPTS, "medium", seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_level_changes_instruction_and_sampling(t5_dir, monkeypatch):
    para = load_paraphraser(str(t5_dir), max_new_tokens=4)
    calls = _spy_generate(monkeypatch, para.model)
    fed = {}
    for level in LEVELS:
        para(PROMPTS[:1], level, seed=0)
        fed[level] = para.tokenizer.decode(calls[-1]["input_ids"][0], skip_special_tokens=True)
        expected = INSTRUCTION_TEMPLATES[level].replace("{text}", PROMPTS[0])
        assert fed[level] == para.tokenizer.decode(para.tokenizer(expected)["input_ids"], skip_special_tokens=True)
        assert fed[level].endswith(PROMPTS[0])
        assert {k: calls[-1][k] for k in SAMPLING[level]} == SAMPLING[level]
    assert len(set(fed.values())) == 3


def test_paraphraser_templates(t5_dir, tmp_path):
    para = load_paraphraser(str(t5_dir), templates={"weak": "paraphrase this {text}"})
    assert para.inputs(["a red circle"], "weak") == ["paraphrase this a red circle"]
    assert para.inputs(["x"], "strong") == [INSTRUCTION_TEMPLATES["strong"].replace("{text}", "x")]
    (tmp_path / "tiny-dipper").symlink_to(t5_dir, target_is_directory=True)
    dipper = load_paraphraser(str(tmp_path / "tiny-dipper"))
    assert dipper.templates == DIPPER_TEMPLATES
    assert dipper.inputs(["a cat"], "weak")[0].startswith("lexical = 60, order = 100")
    with pytest.raises(ValueError, match="unknown perturbation level"):
        para(PROMPTS, "extreme")


# ----------------------------------------------------------------------------- double_captions


def _fake_captioner(calls):
    def captioner(images, prompts):
        calls.append((list(images), list(prompts)))
        return [f"cap({im}|{p})" for im, p in zip(images, prompts)]
    return captioner


def _fake_paraphraser(calls):
    def paraphraser(texts, level, seed):
        calls.append((list(texts), level, seed))
        return [f"{level}/{seed}:{t}" for t in texts]
    return paraphraser


LABELS = [1.0, 0.0, 0.5]  # jpg_0 chosen, jpg_1 chosen, tie (jpg_0 counts as chosen)
IMAGES_0, IMAGES_1 = ["a0", "a1", "a2"], ["b0", "b1", "b2"]


def test_perturbation_keeps_chosen_prompt_in_image_order():
    calls = []
    caps_0, caps_1 = double_captions("perturbation", None, None, PROMPTS, LABELS,
                                     paraphraser=_fake_paraphraser(calls), level="strong", seed=4)
    p = PROMPTS
    assert caps_0 == [p[0], f"strong/4:{p[1]}", p[2]]
    assert caps_1 == [f"strong/4:{p[0]}", p[1], f"strong/4:{p[2]}"]
    assert calls == [(PROMPTS, "strong", 4)]


def test_captioning_in_image_order_whatever_the_label():
    calls = []
    for labels in (LABELS, [0.0, 1.0, 0.0]):
        caps_0, caps_1 = double_captions("captioning", IMAGES_0, IMAGES_1, PROMPTS, labels,
                                         captioner=_fake_captioner(calls))
        assert caps_0 == [f"cap({i}|{p})" for i, p in zip(IMAGES_0, PROMPTS)]
        assert caps_1 == [f"cap({i}|{p})" for i, p in zip(IMAGES_1, PROMPTS)]


def test_hybrid_captions_then_perturbs_the_rejected_caption():
    cap_calls, para_calls = [], []
    caps_0, caps_1 = double_captions("hybrid", IMAGES_0, IMAGES_1, PROMPTS, LABELS,
                                     captioner=_fake_captioner(cap_calls), paraphraser=_fake_paraphraser(para_calls),
                                     level="weak", seed=1)
    p = PROMPTS
    rejected = [f"cap(b0|{p[0]})", f"cap(a1|{p[1]})", f"cap(b2|{p[2]})"]
    assert para_calls == [(rejected, "weak", 1)]
    assert caps_0 == [f"cap(a0|{p[0]})", f"weak/1:{rejected[1]}", f"cap(a2|{p[2]})"]
    assert caps_1 == [f"weak/1:{rejected[0]}", f"cap(b1|{p[1]})", f"weak/1:{rejected[2]}"]


def test_hybrid_with_real_tiny_models(blip_dir, t5_dir):
    captioner = load_captioner(str(blip_dir), max_new_tokens=5)
    para = load_paraphraser(str(t5_dir), max_new_tokens=6)
    received = []

    def spy(texts, level, seed):
        received.append(list(texts))
        return para(texts, level, seed)

    images = _images()
    images_0, images_1, labels = images, images[::-1], [0.0, 1.0, 0.0]
    caps_0, caps_1 = double_captions("hybrid", images_0, images_1, PROMPTS, labels, captioner=captioner,
                                     paraphraser=spy, level="medium", seed=2)
    plain_0, plain_1 = captioner(images_0, PROMPTS), captioner(images_1, PROMPTS)
    rejected = [plain_0[0], plain_1[1], plain_0[2]]
    assert received == [rejected]
    perturbed = para(rejected, "medium", 2)
    assert caps_0 == [perturbed[0], plain_0[1], perturbed[2]]
    assert caps_1 == [plain_1[0], perturbed[1], plain_1[2]]
    assert double_captions("hybrid", images_0, images_1, PROMPTS, labels, captioner=captioner,
                           paraphraser=para, level="medium", seed=2) == (caps_0, caps_1)


def test_double_captions_errors():
    cap, para = _fake_captioner([]), _fake_paraphraser([])
    with pytest.raises(ValueError, match="unknown caption strategy"):
        double_captions("swap", IMAGES_0, IMAGES_1, PROMPTS, LABELS, cap, para)
    with pytest.raises(ValueError, match="unknown perturbation level"):
        double_captions("perturbation", None, None, PROMPTS, LABELS, paraphraser=para, level="huge")
    with pytest.raises(ValueError, match="needs a captioner"):
        double_captions("hybrid", IMAGES_0, IMAGES_1, PROMPTS, LABELS, paraphraser=para)
    with pytest.raises(ValueError, match="needs a captioner"):
        double_captions("captioning", IMAGES_0, IMAGES_1, PROMPTS, LABELS)
    with pytest.raises(ValueError, match="needs a paraphraser"):
        double_captions("perturbation", None, None, PROMPTS, LABELS, captioner=cap)
    with pytest.raises(ValueError, match="needs a paraphraser"):
        double_captions("hybrid", IMAGES_0, IMAGES_1, PROMPTS, LABELS, captioner=cap)
    with pytest.raises(ValueError, match="length mismatch"):
        double_captions("captioning", IMAGES_0, IMAGES_1[:2], PROMPTS, LABELS, captioner=cap)
    with pytest.raises(ValueError, match="length mismatch"):
        double_captions("perturbation", None, None, PROMPTS, LABELS[:2], paraphraser=para)
    with pytest.raises(ValueError, match="length mismatch"):
        double_captions("captioning", None, IMAGES_1, PROMPTS, LABELS, captioner=cap)
    with pytest.raises(ValueError, match=r"labels_0 must lie in \[0, 1\]"):
        double_captions("perturbation", None, None, PROMPTS, [1.0, 2.0, 0.0], paraphraser=para)
    with pytest.raises(TypeError, match="list of strings"):
        double_captions("perturbation", None, None, "a prompt", [1.0], paraphraser=para)
