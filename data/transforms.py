"""Image preprocessing shared by inference and training.

The resize rule reproduces upstream's ``MaxLongEdgeMinShortEdgeResize`` exactly, quirks included, because every token count and position id downstream
depends on the resized size.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

DEFAULT_MAX_PIXELS = 14 * 14 * 9 * 1024  # 1,806,336


def pil_img2rgb(image: Image.Image) -> Image.Image:
    """RGBA / palette-with-transparency images are composited on white; others ``convert('RGB')``.

    Grayscale ("L"), CMYK, palette and 16-bit images all end up as 8-bit RGB.
    """
    if image.mode == "RGBA" or "transparency" in image.info:
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        white.alpha_composite(image)
        return white.convert("RGB")
    if image.mode == "LA":
        return pil_img2rgb(image.convert("RGBA"))
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image).astype(np.float64)
        arr = (arr / max(float(arr.max()), 1.0) * 255.0).astype(np.uint8)
        image = Image.fromarray(arr, mode="L")
    return image.convert("RGB")


def _make_divisible(value: float, stride: int) -> int:
    return max(stride, int(round(value / stride) * stride))


def _apply_scale(width: int, height: int, scale: float, stride: int) -> tuple[int, int]:
    return _make_divisible(round(width * scale), stride), _make_divisible(round(height * scale), stride)


def resize_size(
    width: int,
    height: int,
    max_size: int,
    min_size: int,
    stride: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    img_num: int = 1,
) -> tuple[int, int]:
    """Target (width, height) of upstream's MaxLongEdgeMinShortEdgeResize."""
    scale = min(max_size / max(width, height), 1.0)
    scale = max(scale, min_size / min(width, height))
    new_w, new_h = _apply_scale(width, height, scale, stride)
    if new_w * new_h > max_pixels / img_num:
        # Upstream applies an *area* ratio to the side lengths; kept for parity.
        scale = max_pixels / img_num / (new_w * new_h)
        new_w, new_h = _apply_scale(new_w, new_h, scale, stride)
    if max(new_w, new_h) > max_size:
        scale = max_size / max(new_w, new_h)
        new_w, new_h = _apply_scale(new_w, new_h, scale, stride)
    return new_w, new_h


class ImageTransform:
    """Resize (bicubic, antialiased) to stride multiples, then map pixels to [-1, 1].

    ``__call__`` returns a float tensor [3, H, W]; ``resize`` returns the resized PIL image.
    """

    def __init__(
        self,
        max_image_size: int,
        min_image_size: int,
        image_stride: int,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        self.max_image_size = max_image_size
        self.min_image_size = min_image_size
        self.stride = image_stride
        self.max_pixels = max_pixels

    def __repr__(self) -> str:
        return f"ImageTransform({self.max_image_size}, {self.min_image_size}, {self.stride})"

    def target_size(self, width: int, height: int, img_num: int = 1) -> tuple[int, int]:
        return resize_size(
            width, height, self.max_image_size, self.min_image_size, self.stride, self.max_pixels, img_num
        )

    def resize(self, image: Image.Image, img_num: int = 1) -> Image.Image:
        w, h = self.target_size(*image.size, img_num=img_num)
        if (w, h) == image.size:
            return image
        return image.resize((w, h), Image.BICUBIC)

    def __call__(self, image: Image.Image, img_num: int = 1) -> torch.Tensor:
        return to_tensor_normalized(self.resize(image, img_num))


def to_tensor_normalized(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> float32 [3, H, W] in [-1, 1] (ToTensor then Normalize(0.5, 0.5))."""
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
    return (t - 0.5) / 0.5
