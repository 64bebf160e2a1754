"""Images for the judge: loading (PIL / path / bytes), encoding as data URLs, content hashes, and the
reference-image downscaling of the benchmark protocol (docs/evaluation.md)."""

from __future__ import annotations

import base64
import hashlib
import io
import math
import os
from pathlib import Path
from typing import Union

from PIL import Image, ImageOps

ImageLike = Union[Image.Image, str, os.PathLike, bytes]

_FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg")}


def open_image(image: ImageLike, orient: bool = True, mode: str | None = "RGB") -> Image.Image:
    """Open `image` (PIL image, file path or encoded bytes), apply EXIF orientation, convert to ``mode``
    (None: keep the stored mode, e.g. RGBA or a palette). ``orient=False`` keeps the stored orientation (and
    the EXIF data, so that it can be applied later)."""
    if isinstance(image, Image.Image):
        img = image
    elif isinstance(image, bytes):
        img = Image.open(io.BytesIO(image))
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"judge image not found: {path}")
        with Image.open(path) as f:
            f.load()
            if not orient:  # one new image out of the file: the conversion, or a copy in the stored mode
                return f.convert(mode) if mode else f.copy()
            img = ImageOps.exif_transpose(f)
            return img.convert(mode) if mode else img
    else:
        raise TypeError(f"unsupported judge image type {type(image).__name__}")
    if orient:
        img = ImageOps.exif_transpose(img)
    return img.convert(mode) if mode else img


def load_rgb(image: ImageLike, orient: bool = True) -> Image.Image:
    """Open `image` as RGB (``open_image``)."""
    return open_image(image, orient, "RGB")


def file_bytes(image: ImageLike) -> bytes:
    """The encoded bytes of an image given as a file path or bytes (for clients that send files as they are)."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"judge image not found: {path}")
        return path.read_bytes()
    raise TypeError(f"sending an image's file bytes needs a path or bytes, not {type(image).__name__}")


def encode_image(img: Image.Image, fmt: str = "png", jpeg_quality: int = 75) -> str:
    """RGB image -> `data:image/...;base64,...` URL. PNG is lossless; "jpeg" (PIL's default quality 75)
    reproduces the benchmark authors' client."""
    if fmt not in _FORMATS:
        raise ValueError(f"image format must be one of {sorted(_FORMATS)}, got {fmt!r}")
    pil_fmt, mime = _FORMATS[fmt]
    buf = io.BytesIO()
    img.save(buf, format=pil_fmt, **({"quality": jpeg_quality} if pil_fmt == "JPEG" else {}))
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def image_hash(img: Image.Image) -> str:
    """sha256 over mode, size and raw pixels: stable across PNG encoder versions, unlike file bytes."""
    h = hashlib.sha256()
    h.update(f"{img.mode}:{img.width}x{img.height}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def resize_reference(img: Image.Image, max_pixels: int = 1024 * 1024, multiple: int = 16) -> Image.Image:
    """Downscale a reference image the way the benchmark protocol does before judging.

    If w*h > max_pixels both sides are scaled by sqrt(max_pixels / (w*h)) and truncated; then both sides
    are always floored to a multiple of `multiple` (PIL default resize filter).
    """
    w, h = img.size
    if w * h > max_pixels:
        s = math.sqrt(max_pixels / (w * h))
        w, h = int(w * s), int(h * s)
    w, h = (w // multiple) * multiple, (h // multiple) * multiple
    if w <= 0 or h <= 0:
        raise ValueError(f"reference image {img.size} is smaller than {multiple}px on one side")
    return img.resize((w, h)) if (w, h) != img.size else img


def load_reference(image: ImageLike) -> Image.Image:
    """A reference image as the benchmark authors' scorers prepare it: read and converted to RGB, downscaled
    (``resize_reference``) in its stored orientation, and only then turned by its EXIF orientation (their
    client applies it when encoding). Rotating first would resample other pixels."""
    img = resize_reference(load_rgb(image, orient=False))
    return ImageOps.exif_transpose(img).convert("RGB")


def load_reference_decoded(image: ImageLike) -> Image.Image:
    """A reference image as OmniContext's original evaluator (VectorSpaceLab/OmniGen2) prepares it: its data
    loader decodes the image with the EXIF orientation applied and in its stored mode, the downscaling
    (``resize_reference``) runs in that mode (PIL premultiplies RGBA by its alpha, so transparent pixels turn
    black; palette images are resized NEAREST), and only the client converts to RGB."""
    return resize_reference(open_image(image, orient=True, mode=None)).convert("RGB")
