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
