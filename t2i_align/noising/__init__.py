"""How (x_t, target, t) are made for a pair: forward noising (DPO, MaPO, DCPO, SFT)."""

from t2i_align.noising.forward import diffusion_target, forward_noise_pairs, sample_pair_timesteps

__all__ = ["diffusion_target", "forward_noise_pairs", "sample_pair_timesteps"]
