"""Per-image captions for preference pairs, as in DCPO's Pick-Double-Caption dataset.

DCPO (Saeedi et al. 2025, "Dual Caption Preference Optimization", arXiv 2502.06023) trains on a
caption per image: ``caption_0`` for ``jpg_0`` and ``caption_1`` for ``jpg_1``. It builds them
with one of three strategies (``STRATEGIES``):

- captioning: each image is described by an image-to-text model, conditioned on the prompt
  (DCPO: a LLaVA VLM asked about the image with respect to the prompt);
- perturbation: chosen caption = the original prompt, rejected caption = the prompt perturbed by
  a text-to-text model (DCPO: DIPPER) at a level in ``LEVELS`` (weak: slight rewording keeping
  the meaning; medium: some details / attributes changed; strong: main content changed);
- hybrid: chosen caption = caption of the chosen image, rejected caption = caption of the
  rejected image, then perturbed.

Captions always come back in IMAGE order, whatever the label. Models load with transformers from
any hub id or local folder (offline: a local folder or files already in the HF cache).
"""

from __future__ import annotations

import torch
from t2i_align.errors import InputError

STRATEGIES = ("captioning", "perturbation", "hybrid")
LEVELS = ("weak", "medium", "strong")

# Captioner prompts. ``{prompt}`` (if present) is replaced by the pair's text prompt.
BLIP_PREFIX = "a picture of"  # BLIP-style conditional captioning: a text prefix the model continues
CHAT_INSTRUCTION = ('This image was generated for the prompt "{prompt}". '
                    "Write a one-sentence caption describing what the image actually shows.")

# Paraphraser inputs per level (``{text}`` is replaced by the text to perturb), for instruction-
# tuned seq2seq models (e.g. Flan-T5).
INSTRUCTION_TEMPLATES = {
    "weak": "Paraphrase this image caption with slight rewording, keeping its meaning: {text}",
    "medium": "Rewrite this image caption, changing some details or attributes of its objects: {text}",
    "strong": "Rewrite this image caption so that it describes a different main subject and scene: {text}",
}
# DCPO's own inputs for DIPPER (kalpeshk2011/dipper-paraphraser-xxl): lexical diversity 40 / 60 / 80
# (DIPPER's code is 100 - diversity), order diversity 0, and their instruction prefix.
DIPPER_TEMPLATES = {
    level: f"lexical = {code}, order = 100 Paraphrase and perturb the following image caption. <sent> {{text}} </sent>"
    for level, code in zip(LEVELS, (60, 40, 20))
}
# Sampling per level: more randomness for stronger perturbation (DCPO sampled with top_p = 0.75).
SAMPLING = {
    "weak": {"do_sample": True, "temperature": 0.7, "top_p": 0.75, "top_k": 0},
    "medium": {"do_sample": True, "temperature": 1.0, "top_p": 0.75, "top_k": 0},
    "strong": {"do_sample": True, "temperature": 1.3, "top_p": 0.95, "top_k": 0},
}


def _fill(template: str, key: str, value: str) -> str:
    """``template`` with ``{key}`` replaced (plain replace: other braces are left alone)."""
    return template.replace("{" + key + "}", value)


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise InputError(f"unknown perturbation level {level!r}; expected one of {LEVELS}")


def _to_device(inputs, model) -> dict:
    """Processor output on the model's device; floating tensors (pixels) in the model's dtype."""
    return {k: v.to(model.device, model.dtype) if v.is_floating_point() else v.to(model.device)
            for k, v in inputs.items() if isinstance(v, torch.Tensor)}


class Captioner:
    """``captioner(images, prompts) -> captions``: an image-to-text model and its processor.

    Prompt conditioning: with a chat processor (one with a ``chat_template``, e.g. LLaVA,
    Qwen2-VL) each image gets a user turn [image, ``prompt_template`` with ``{prompt}`` filled]
    and only the newly generated tokens are decoded. Otherwise (BLIP-style) ``prompt_template`` is
    a text prefix the model continues, and the echoed prefix is stripped from the output; BLIP's
    default prefix ``BLIP_PREFIX`` ignores the prompt (BLIP continues a prefix, it cannot follow
    instructions), put ``{prompt}`` in the template to condition on it. Items with different
    prefixes are generated in separate batches (BLIP drops the last prefix token, so right-padded
    prefixes would break). Greedy decoding by default, hence deterministic.
    """

    def __init__(self, model, processor, prompt_template: str | None = None, chat: bool | None = None,
                 max_new_tokens: int = 40, batch_size: int = 8, **generate_kwargs):
        self.model, self.processor = model.eval(), processor
        self.chat = getattr(processor, "chat_template", None) is not None if chat is None else chat
        if prompt_template is None:
            prompt_template = CHAT_INSTRUCTION if self.chat else BLIP_PREFIX
        self.prompt_template = prompt_template
        self.batch_size = batch_size
        self.generate_kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1,
                                **generate_kwargs}
        if self.chat:  # decoder-only VLMs generate after the prompt: pad on the left
            getattr(processor, "tokenizer", processor).padding_side = "left"

    def _texts(self, prompts: list[str]) -> list[str]:
        texts = [_fill(self.prompt_template, "prompt", p) for p in prompts]
        if not self.chat:
            return texts
        return [self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": t}]}],
            add_generation_prompt=True, tokenize=False) for t in texts]

    @torch.no_grad()
    def _generate(self, images: list, texts: list[str]) -> list[str]:
        inputs = self.processor(images=images, text=texts, padding=True, return_tensors="pt")
        out = self.model.generate(**_to_device(inputs, self.model), **self.generate_kwargs)
        if self.chat and not self.model.config.is_encoder_decoder:
            out = out[:, inputs["input_ids"].shape[1]:]
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        captions = tokenizer.batch_decode(out, skip_special_tokens=True)
        if not self.chat:  # the output starts with the (one) prefix: strip it, comparing decoded forms
            prefix = tokenizer.decode(tokenizer(texts[0])["input_ids"], skip_special_tokens=True).strip()
            captions = [c.strip()[len(prefix):] if c.strip().startswith(prefix) else c for c in captions]
        return [c.strip() for c in captions]

    def __call__(self, images: list, prompts: list[str]) -> list[str]:
        if len(images) != len(prompts):
            raise InputError(f"got {len(images)} images but {len(prompts)} prompts")
        images = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        texts = self._texts(list(prompts))
        groups: dict[str, list[int]] = {}  # prefix mode: one group per distinct prefix
        for i, text in enumerate(texts):
            groups.setdefault("" if self.chat else text, []).append(i)
        captions: list[str] = [""] * len(texts)
        for idx in groups.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                for i, c in zip(chunk, self._generate([images[i] for i in chunk], [texts[i] for i in chunk])):
                    captions[i] = c
        return captions


class Paraphraser:
    """``paraphraser(texts, level, seed) -> perturbed texts``: a seq2seq text-to-text model.

    Each text is put into ``templates[level]`` and generated with ``sampling[level]`` under
    ``torch.manual_seed(seed)`` inside a forked RNG (the global RNG is left untouched), so the same
    (texts, level, seed, batch_size) gives the same output.
    """

    def __init__(self, model, tokenizer, templates: dict | None = None, sampling: dict | None = None,
                 max_new_tokens: int = 77, batch_size: int = 16, max_input_length: int = 512):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.templates = {**INSTRUCTION_TEMPLATES, **(templates or {})}
        self.sampling = {**SAMPLING, **(sampling or {})}
        self.max_new_tokens, self.batch_size, self.max_input_length = max_new_tokens, batch_size, max_input_length

    def inputs(self, texts: list[str], level: str) -> list[str]:
        """The model inputs for ``texts`` at ``level`` (instruction template filled)."""
        _check_level(level)
        return [_fill(self.templates[level], "text", t) for t in texts]

    @torch.no_grad()
    def __call__(self, texts: list[str], level: str, seed: int = 0) -> list[str]:
        sources, out = self.inputs(list(texts), level), []
        cuda = [self.model.device] if self.model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            for start in range(0, len(sources), self.batch_size):
                enc = self.tokenizer(sources[start:start + self.batch_size], padding=True, truncation=True,
                                     max_length=self.max_input_length, return_tensors="pt")
                ids = self.model.generate(**_to_device(enc, self.model), max_new_tokens=self.max_new_tokens,
                                          **self.sampling[level])
                out += [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return out


def load_captioner(path: str, device="cpu", dtype=torch.float32, prompt_template: str | None = None,
                   chat: bool | None = None, max_new_tokens: int = 40, batch_size: int = 8,
                   processor_path: str | None = None, **generate_kwargs) -> Captioner:
    """A ``Captioner`` from a hub id or local folder: ``AutoProcessor`` + ``AutoModelForImageTextToText``
    (``AutoModelForVision2Seq`` where a transformers version has it and the first does not fit)."""
    import transformers

    errors = []
    for name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"):
        auto = getattr(transformers, name, None)
        if auto is None:
            continue
        try:
            model = auto.from_pretrained(path, dtype=dtype)
            break
        except ValueError as error:  # model type not in this auto class's mapping
            errors.append(f"{name}: {error}")
    else:
        raise InputError(f"cannot load {path!r} as an image-to-text model: " + "; ".join(errors))
    processor = transformers.AutoProcessor.from_pretrained(processor_path or path)
    return Captioner(model.to(device).requires_grad_(False), processor, prompt_template, chat,
                     max_new_tokens, batch_size, **generate_kwargs)


def load_paraphraser(path: str, device="cpu", dtype=torch.float32, templates: dict | None = None,
                     sampling: dict | None = None, tokenizer_path: str | None = None,
                     max_new_tokens: int = 77, batch_size: int = 16) -> Paraphraser:
    """A ``Paraphraser`` from a hub id or local folder (``AutoTokenizer`` + ``AutoModelForSeq2SeqLM``).

    ``templates`` overrides ``INSTRUCTION_TEMPLATES`` per level; for a DIPPER checkpoint (name
    containing "dipper") the default is ``DIPPER_TEMPLATES``, DCPO's setting. DIPPER ships no
    tokenizer: pass ``tokenizer_path="google/t5-v1_1-xxl"`` as DCPO did.
    """
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    if templates is None and "dipper" in str(path).lower():
        templates = DIPPER_TEMPLATES
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or path)
    model = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=dtype).to(device).requires_grad_(False)
    return Paraphraser(model, tokenizer, templates, sampling, max_new_tokens, batch_size)


def _check_pairs(strategy, images_0, images_1, prompts, labels) -> None:
    """Raise a clear error unless every per-pair input has one entry per pair and labels are in [0, 1]."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, one per pair")
    sizes = {"prompts": len(prompts), "labels_0": len(labels)}
    if strategy != "perturbation" or images_0 is not None or images_1 is not None:
        sizes.update({name: 0 if images is None else len(images)
                      for name, images in (("images_0", images_0), ("images_1", images_1))})
    if len(set(sizes.values())) > 1:
        raise InputError(f"length mismatch: {sizes}")
    if any(not 0.0 <= x <= 1.0 for x in labels):
        raise InputError("labels_0 must lie in [0, 1] (1 = jpg_0 chosen, 0 = jpg_1 chosen, 0.5 = tie)")


def double_captions(strategy: str, images_0, images_1, prompts, labels_0, captioner=None, paraphraser=None,
                    level: str = "medium", seed: int = 0) -> tuple[list[str], list[str]]:
    """(captions_0, captions_1) for pairs (prompt, jpg_0, jpg_1), in image order (DCPO, arXiv 2502.06023).

    ``labels_0`` follows Pick-a-Pic: 1.0 = jpg_0 chosen, 0.0 = jpg_1 chosen. A tie (0.5) keeps
    jpg_0 as the chosen image, like the rest of t2i_align (label_0 == 0 is the only swap). Images
    may be None for "perturbation", which only uses the prompts. ``captioner(images, prompts)``
    is needed for "captioning" / "hybrid" (called once, on images_0 + images_1),
    ``paraphraser(texts, level, seed)`` for "perturbation" / "hybrid" (called once, on the
    rejected texts in pair order).
    """
    if strategy not in STRATEGIES:
        raise InputError(f"unknown caption strategy {strategy!r}; expected one of {STRATEGIES}")
    _check_level(level)
    if strategy != "perturbation" and captioner is None:
        raise InputError(f"strategy {strategy!r} needs a captioner (see load_captioner)")
    if strategy != "captioning" and paraphraser is None:
        raise InputError(f"strategy {strategy!r} needs a paraphraser (see load_paraphraser)")
    labels = [float(x) for x in labels_0]
    _check_pairs(strategy, images_0, images_1, prompts, labels)
    prompts, n = list(prompts), len(labels)
    if strategy == "perturbation":
        caps_0, caps_1 = list(prompts), list(prompts)
    else:
        both = list(captioner(list(images_0) + list(images_1), prompts + prompts))
        if len(both) != 2 * n:
            raise InputError(f"captioner returned {len(both)} captions for {2 * n} images")
        caps_0, caps_1 = both[:n], both[n:]
    if strategy == "captioning":
        return caps_0, caps_1
    second = [x == 0 for x in labels]  # True where jpg_1 is the chosen image
    rejected = [c0 if s else c1 for s, c0, c1 in zip(second, caps_0, caps_1)]
    perturbed = list(paraphraser(rejected, level=level, seed=seed))
    if len(perturbed) != n:
        raise InputError(f"paraphraser returned {len(perturbed)} texts for {n} inputs")
    for i, s in enumerate(second):
        (caps_0 if s else caps_1)[i] = perturbed[i]
    return caps_0, caps_1
