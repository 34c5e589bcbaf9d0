"""LAION aesthetic predictor v2 ("improved-aesthetic-predictor", Schuhmann et al.).

A linear MLP 768-1024-128-64-16-1 (dropout between the first layers, no activations) on the
L2-normalised CLIP ViT-L/14 image embedding. Prompts are ignored. Scores are roughly on a 1-10
scale (about 5-6.5 for typical generated images).

Head weights: ``sac+logos+ava1-l14-linearMSE.pth`` from the repository
https://github.com/christophschuhmann/improved-aesthetic-predictor (file in the repository
root; direct link
https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac%2Blogos%2Bava1-l14-linearMSE.pth).
It is a plain state dict with the original ``nn.Sequential`` keys ``layers.0`` (768->1024),
``layers.2`` (1024->128), ``layers.4`` (128->64), ``layers.6`` (64->16), ``layers.7`` (16->1)
(``layers.1/3/5`` are dropouts). Download it once and pass its path as ``head_path``, or put
it at ``$T2I_ALIGN_CACHE/aesthetic/sac+logos+ava1-l14-linearMSE.pth`` (default cache
``~/.cache/t2i_align``). A ``.safetensors`` file with the same keys works too.
The original ran OpenAI ``clip`` ViT-L/14 (= ``openai/clip-vit-large-patch14``) with the
standard 224 px CLIP preprocessing, which the transformers processor reproduces.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import torch
from PIL import Image
from torch import nn

from .clip_common import batched, image_embeddings, load_clip, to_rgb
from t2i_align.errors import InputError, InputNotFoundError

AESTHETIC_CLIP = "openai/clip-vit-large-patch14"
AESTHETIC_HEAD_FILENAME = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_HEAD_URL = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac%2Blogos%2Bava1-l14-linearMSE.pth"
)


class AestheticMLP(nn.Module):
    """The original head, same module layout so the original state dict loads unchanged."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def default_head_path() -> pathlib.Path:
    from t2i_align.models.clip_tokenizer import cache_dir

    return cache_dir() / "aesthetic" / AESTHETIC_HEAD_FILENAME


def load_head_state_dict(path, allow_pickle=None) -> dict[str, torch.Tensor]:
    """Read the head's state dict from a ``.pth`` / ``.pt`` / ``.ckpt`` or ``.safetensors`` file.

    Torch files load with ``weights_only=True``; one that needs pickle raises
    :class:`~.checkpoint_io.PickleNotAllowedError` unless ``allow_pickle`` names it.
    """
    from .checkpoint_io import read_weights

    path = pathlib.Path(path)
    if not path.is_file():
        raise InputNotFoundError(
            f"aesthetic head weights not found at {path}; download {AESTHETIC_HEAD_FILENAME} from "
            f"{AESTHETIC_HEAD_URL} and pass head_path= (or place it at {default_head_path()})"
        )
    state = read_weights(path, allow_pickle=allow_pickle)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a state dict, got {type(state).__name__}")
    # tolerate a "module." / "model." prefix (DataParallel / Lightning checkpoints)
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def build_head(state: dict[str, torch.Tensor]) -> AestheticMLP:
    if "layers.0.weight" not in state:
        raise KeyError(f"not an aesthetic-predictor state dict (keys: {sorted(state)[:8]} ...)")
    head = AestheticMLP(input_size=state["layers.0.weight"].shape[1])
    head.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return head.eval().requires_grad_(False)


class AestheticReward:
    """Callable reward: ``reward(images, prompts=None) -> float32 [N]`` on CPU; prompts are ignored."""

    name = "aesthetic"

    def __init__(self, model, processor, head: AestheticMLP, batch_size: int = 16):
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.processor = processor
        device = next(model.parameters()).device
        self.head = head.to(device=device, dtype=torch.float32).eval()  # head runs in float32
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str] | None = None) -> torch.Tensor:
        if prompts is not None and len(prompts) != len(images):
            raise InputError(f"got {len(images)} images but {len(prompts)} prompts")
        images = to_rgb(images)
        out = []
        for chunk in batched(images, self.batch_size):
            emb = image_embeddings(self.model, self.processor, chunk, normalize=True)
            out.append(self.head(emb).squeeze(-1).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float32)


def load_aesthetic(
    clip_path: str = AESTHETIC_CLIP,
    head_path=None,
    device="cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int = 16,
    processor_path: str | None = None,
    allow_pickle=None,
) -> AestheticReward:
    """Load CLIP ViT-L/14 + the aesthetic MLP head.

    ``head_path``: local ``.pth`` / ``.safetensors`` of the head (see the module docstring for
    where the real ``sac+logos+ava1-l14-linearMSE.pth`` comes from); ``None`` looks in
    ``$T2I_ALIGN_CACHE/aesthetic/``. ``allow_pickle``: the head file's path if it is a torch file
    that needs pickle and you trust it (the released head does not need it).
    """
    path = head_path if head_path is not None else default_head_path()
    head = build_head(load_head_state_dict(path, allow_pickle=allow_pickle))
    model, processor = load_clip(clip_path, processor_path, device=device, dtype=dtype)
    emb_dim = model.config.projection_dim
    if head.input_size != emb_dim:
        raise InputError(f"aesthetic head expects {head.input_size}-d embeddings, CLIP model gives {emb_dim}-d")
    return AestheticReward(model, processor, head, batch_size=batch_size)
