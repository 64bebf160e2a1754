"""DINO ViT-S/16 image embeddings for subject consistency.

Pre-processing follows the protocol exactly (docs/psrbench.md), written with PIL + torch (no
torchvision): Resize shorter side to 256 (bicubic, longer side `int(256 * long / short)`), CenterCrop
224 (offsets `round((size - 224) / 2)`), convert to RGB (after the resize, as upstream), scale to [0, 1],
ImageNet mean/std. Embedding = CLS token of the final-layer-normed output (what DINO's own
`dino_vits16` returns), L2-normalised.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

DEFAULT_FEATURE_MODEL = "facebook/dino-vits16"
RESIZE = 256
CROP = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_shorter(image: Image.Image, size: int = RESIZE) -> Image.Image:
    """Shorter side -> `size`, longer side -> int(size * long / short), bicubic."""
    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) == (w, h):
        return image
    return image.resize((new_w, new_h), Image.BICUBIC)


def center_crop(image: Image.Image, size: int = CROP) -> Image.Image:
    """Central `size` x `size` window; offsets rounded like torchvision's CenterCrop."""
    w, h = image.size
    if w < size or h < size:
        raise ValueError(f"image {w}x{h} is smaller than the {size} crop")
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def dino_preprocess(image: Image.Image) -> torch.Tensor:
    """PIL image (any size >= 1x1, any mode) -> float tensor [3, 224, 224], ImageNet-normalised."""
    if image.width < 1 or image.height < 1:
        raise ValueError(f"cannot embed an empty image ({image.width}x{image.height})")
    img = center_crop(resize_shorter(image)).convert("RGB")
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


class DinoFeatureExtractor:
    """`transformers.ViTModel` (DINO weights) -> L2-normalised CLS embeddings.

    model_name_or_path: local folder or hub id (default facebook/dino-vits16), loaded with from_pretrained.
    """

    def __init__(
        self,
        model_name_or_path: str = DEFAULT_FEATURE_MODEL,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
    ) -> None:
        from transformers import ViTModel

        self.name = str(model_name_or_path)
        self.device = torch.device(device)
        self.batch_size = batch_size
        # DINO checkpoints have no pooler; the CLS token of last_hidden_state is already layer-normed.
        self.model = ViTModel.from_pretrained(model_name_or_path, add_pooling_layer=False)
        self.model.to(self.device, dtype=torch.float32).eval()

    @torch.no_grad()
    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        """images: N PIL images -> [N, D] float32 on CPU, unit L2 norm per row."""
        if not images:
            return torch.zeros(0, self.model.config.hidden_size)
        feats = []
        for i in range(0, len(images), self.batch_size):
            x = torch.stack([dino_preprocess(im) for im in images[i : i + self.batch_size]]).to(self.device)
            cls = self.model(pixel_values=x).last_hidden_state[:, 0]
            feats.append(cls.float().cpu())
        f = torch.cat(feats)
        return f / f.norm(dim=1, keepdim=True)
