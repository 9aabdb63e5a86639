"""Turning what a user passes as an image (PIL image, path, bytes) into an RGB PIL image."""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from vlmctl.daemon.engine.sampling_params import InvalidRequest

# Pillow's own guard against decompression bombs, made an error instead of a warning.
DEFAULT_MAX_PIXELS = 178_956_970


class ImageError(InvalidRequest):
    """An image that cannot be read or decoded; the message says which and why."""


def load_image(source: object, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A PIL image in RGB with its EXIF orientation applied."""
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, (bytes, bytearray, memoryview)):
        image = _decode(bytes(source), "image bytes", max_pixels)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"cannot read image {str(path)!r}: {exc.strerror or exc}") from exc
        image = _decode(data, f"image {str(path)!r}", max_pixels)
    else:
        raise ImageError(f"an image must be a PIL image, a path or bytes, not {type(source).__name__}")
    if image.width * image.height > max_pixels:
        raise ImageError(f"image of {image.width}x{image.height} pixels is over the limit of {max_pixels}")
    image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        image = _to_rgb(image)
    return image


def _decode(data: bytes, what: str, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageError(f"{what} is empty")
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > max_pixels:
            raise ImageError(f"{what} has {image.width}x{image.height} pixels, over the limit of {max_pixels}")
        image.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{what} is too large to decode safely: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{what} is not a decodable image ({type(exc).__name__}: {exc})") from exc
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten transparency onto white (as a viewer shows it) and convert any mode to RGB."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
