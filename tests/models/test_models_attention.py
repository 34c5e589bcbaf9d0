import pytest
import torch

from t2i_align.models.attention import set_attention_backend
from t2i_align.models.tiny import build_tiny_pipeline


@pytest.mark.parametrize("kind", ["sdxl", "sd21"])
def test_sdpa_equals_eager(kind, unet_inputs):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet = build_tiny_pipeline(kind).unet.eval()
    inputs = unet_inputs(unet)
    set_attention_backend(unet, "eager")
    assert all(type(p) is AttnProcessor for p in unet.attn_processors.values())
    with torch.no_grad():
        eager = unet(**inputs).sample
    set_attention_backend(unet, "sdpa")
    assert all(type(p) is AttnProcessor2_0 for p in unet.attn_processors.values())
    with torch.no_grad():
        sdpa = unet(**inputs).sample
    torch.testing.assert_close(sdpa, eager, rtol=0, atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on machines without a CUDA GPU")
def test_xformers_refused_with_clear_message():
    unet = build_tiny_pipeline("sd15").unet
    with pytest.raises(ValueError, match="xformers.*(not installed|no CUDA GPU).*model.attention=sdpa"):
        set_attention_backend(unet, "xformers")


def test_unknown_backend():
    with pytest.raises(ValueError, match="sdpa, eager, xformers"):
        set_attention_backend(build_tiny_pipeline("sd15").unet, "flash")
