"""Reward models, one file each, one interface: reward(images, prompts) -> float32 tensor [N].

load_reward(name, **kwargs) selects one by name; kwargs are the loader's (weight locations,
device, dtype, batch_size, allow_pickle). Heavy libraries are imported only when a reward is
loaded. Weight files are never unpickled unless `allow_pickle` names them (see checkpoint_io).
"""

from t2i_align.errors import InputError

REWARDS = {
    "pickscore": ("t2i_align.evaluation.rewards.pickscore", "load_pickscore", {}),
    "clip_score": ("t2i_align.evaluation.rewards.clip_score", "load_clip_score", {}),
    "aesthetic": ("t2i_align.evaluation.rewards.aesthetic", "load_aesthetic", {}),
    "hpsv2": ("t2i_align.evaluation.rewards.hpsv2", "load_hpsv2", {"version": "v2"}),
    "hpsv2_1": ("t2i_align.evaluation.rewards.hpsv2", "load_hpsv2", {"version": "v2.1"}),  # HPSv2.1
    "image_reward": ("t2i_align.evaluation.rewards.image_reward", "load_image_reward", {}),
    # HPSv3 (MizzenAI/HPSv3, ICCV 2025): Qwen2-VL-7B-Instruct + reward head, score = mu
    "hpsv3": ("t2i_align.evaluation.rewards.hpsv3", "load_hpsv3", {}),
    # the toy world's metrics (t2i_align/toy): rates of the target style, right colour, right shape
    "toy_style": ("t2i_align.evaluation.rewards.toy", "load_toy_reward", {"name": "toy_style"}),
    "toy_colour": ("t2i_align.evaluation.rewards.toy", "load_toy_reward", {"name": "toy_colour"}),
    "toy_shape": ("t2i_align.evaluation.rewards.toy", "load_toy_reward", {"name": "toy_shape"}),
}


def load_reward(name: str, **kwargs):
    """Load the reward `name` (see REWARDS) with the loader's keyword arguments."""
    import importlib

    if name not in REWARDS:
        raise InputError(f"unknown reward {name!r}; known: {sorted(REWARDS)}")
    module, loader, defaults = REWARDS[name]
    return getattr(importlib.import_module(module), loader)(**{**defaults, **kwargs})
