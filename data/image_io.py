"""Image decoding for training data: strict first, truncated images accepted but counted.

Upstream decodes with ``ImageFile.LOAD_TRUNCATED_IMAGES = True`` (truncated files silently become
partially grey images). Here a file is first decoded strictly; only if that fails because the data is
truncated is it decoded again in the tolerant mode, and the event is counted in ``stats`` so it never
passes silently. Undecodable data raises (the caller skips and counts the row).
"""

from __future__ import annotations

import io
import logging
from collections import Counter

from PIL import Image, ImageFile

from data.transforms import pil_img2rgb

logger = logging.getLogger(__name__)

MAX_IMAGE_PIXELS = 200_000_000  # upstream's Image.MAX_IMAGE_PIXELS for training data


def decode_image(data: bytes | str, stats: Counter | None = None, where: str = "") -> Image.Image:
    """Decode encoded image bytes (or a file path) to an 8-bit RGB PIL image (alpha composited on white)."""
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        try:
            with Image.open(source) as img:
                img.load()
                return pil_img2rgb(img)
        except OSError as e:
            if "truncated" not in str(e).lower():
                raise
            if isinstance(source, io.BytesIO):
                source.seek(0)
            previous = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = True
            try:
                with Image.open(source) as img:
                    img.load()
                    image = pil_img2rgb(img)
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = previous
            if stats is not None:
                stats["truncated_images"] += 1
            logger.warning("truncated image decoded with missing pixels (%s): %s", where or "?", e)
            return image
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
