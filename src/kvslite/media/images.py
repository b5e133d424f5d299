"""Scale a decoded frame and encode it as JPEG (libjpeg-turbo) or PNG."""

from __future__ import annotations

import io

import av
import simplejpeg
from PIL import Image


def output_size(width: int, height: int, want_width: int | None,
                want_height: int | None) -> tuple[int, int]:
    """Neither: the source size. Both: exactly that. One: the other keeps the aspect ratio."""
    if want_width and want_height:
        return want_width, want_height
    if want_width:
        return want_width, max(1, round(height * want_width / width))
    if want_height:
        return max(1, round(width * want_height / height)), want_height
    return width, height


def encode_image(frame: av.VideoFrame, image_format: str, *, quality: int = 80,
                 width: int | None = None, height: int | None = None) -> bytes:
    size = output_size(frame.width, frame.height, width, height)
    # one libswscale pass does both the scaling and the conversion to RGB
    rgb = frame.reformat(width=size[0], height=size[1], format="rgb24",
                         interpolation="BILINEAR").to_ndarray()
    if image_format == "JPEG":
        return simplejpeg.encode_jpeg(rgb, quality=quality, colorspace="RGB",
                                      colorsubsampling="420")
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
