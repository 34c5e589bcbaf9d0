"""How (x_t, target, t) are made for a pair: forward noising (DPO, MaPO, DCPO, SFT) or DDIM
inversion (InPO). Both return (noisy [2B], target [2B], timesteps [2B]), chosen images first."""

from t2i_align.noising.ddim_inversion import ddim_invert, implied_noise, inversion_grid, inversion_noise_pairs
from t2i_align.noising.forward import diffusion_target, forward_noise_pairs, sample_pair_timesteps

NOISINGS = ("forward", "inversion")

__all__ = ["NOISINGS", "ddim_invert", "diffusion_target", "forward_noise_pairs", "implied_noise",
           "inversion_grid", "inversion_noise_pairs", "sample_pair_timesteps"]
