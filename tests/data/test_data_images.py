"""decode_image: every storage form decodes to RGB; failures name where and why."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from t2i_align.data.images import BadImageError, decode_image


def _encoded(image, fmt):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_all_forms_decode_to_rgb(tmp_path):
    rgba = Image.new("RGBA", (6, 4), (255, 0, 0, 128))
    rgba.save(tmp_path / "x.png")
    jpeg = _encoded(Image.new("RGB", (6, 4), (0, 0, 255)), "JPEG")
    path = tmp_path / "x.png"
    for value in (jpeg, bytearray(jpeg), {"bytes": jpeg, "path": None}, {"bytes": None, "path": str(path)},
                  str(path), path, rgba, Image.new("L", (6, 4))):
        image = decode_image(value, where="test")
        assert image.mode == "RGB" and image.size == (6, 4)


@pytest.mark.parametrize("value, cause", [
    (b"not an image", "UnidentifiedImageError"),
    (_encoded(Image.new("RGB", (64, 64)), "PNG")[:60], "truncated|OSError|SyntaxError"),
    (b"", "empty image bytes"),
    (None, "None"),
    ("/no/such/file.png", "no such image file"),
    ({"bytes": None, "path": None}, "neither 'bytes' nor 'path'"),
    (3.5, "unsupported image value of type float"),
])
def test_failures_name_where_and_cause(value, cause):
    with pytest.raises(BadImageError, match=rf"row 17, column jpg_1: .*({cause})"):
        decode_image(value, where="row 17, column jpg_1")


# ----------------------------------------------------------------------------- odd images


def test_oversized_image_is_refused_from_its_header_before_decoding():
    from tests.data.bad_data import png_header_only

    value = png_header_only(13000, 13000)  # decoding would need ~500 MB; the file is a few bytes
    with pytest.raises(BadImageError, match=r"row 4, column jpg_0: .*13000 x 13000 = 169000000 pixels is more than "
                                            r"data.max_image_pixels=50000000 \(not decoded\)"):
        decode_image(value, where="row 4, column jpg_0", max_pixels=50_000_000)
    # an image at the limit passes
    assert decode_image(_encoded(Image.new("RGB", (100, 50)), "PNG"), "x", max_pixels=5000).size == (100, 50)
    with pytest.raises(BadImageError, match="5001 pixels"):
        decode_image(Image.new("RGB", (5001, 1)), "x", max_pixels=5000)


def test_alpha_is_composited_over_white_and_palette_transparency_too():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent black
    rgba.putpixel((1, 1), (255, 0, 0, 255))
    rgba.putpixel((2, 2), (0, 0, 255, 128))
    out = decode_image(_encoded(rgba, "PNG"), "x")
    assert out.getpixel((0, 0)) == (255, 255, 255)  # not the black the transparent pixels hold
    assert out.getpixel((1, 1)) == (255, 0, 0)
    assert out.getpixel((2, 2)) == (127, 127, 255)  # half blue over white
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    out = decode_image(_encoded(palette, "PNG"), "x")
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 0)) == (10, 200, 10)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    import numpy as np

    values = np.array([[0, 257 * 100, 65535, 32768]], dtype=np.uint16)
    out = decode_image(_encoded(Image.fromarray(values), "PNG"), "x")
    assert [out.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (100, 100, 100), (255, 255, 255), (128, 128, 128)]


def test_cmyk_grey_and_exif_orientation():
    cmyk = decode_image(_encoded(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG"), "x")
    assert cmyk.mode == "RGB" and cmyk.getpixel((0, 0))[0] > 240 and cmyk.getpixel((0, 0))[1] < 15
    assert decode_image(Image.new("L", (3, 3), 90), "x").getpixel((0, 0)) == (90, 90, 90)
    # a 6 x 2 photo stored with EXIF orientation 6 (rotate 90 degrees clockwise to view) is 2 x 6
    image = Image.new("RGB", (6, 2), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue(), "x").size == (2, 6)
