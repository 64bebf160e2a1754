"""Build one training sample: a *sequence plan* plus its text ids and image tensors (docs/data.md).

A sample is a dict::

    sequence_plan      list of items {type: text|vit_image|vae_image, enable_cfg, loss,
                       special_token_loss, special_token_label}
    text_ids_list      list[list[int]]   one entry per text item, in plan order
    image_tensor_list  list[Tensor[3,H,W]] one entry per image item, in plan order
    num_tokens         text ids + image tokens (W*H/stride^2), without markers / bos / eos

The packer (sequence_packing.py) turns it into tokens; it adds 2 tokens per plan item.
"""

from __future__ import annotations

from PIL import Image

from data.transforms import ImageTransform
from modeling.tokenizer import encode


def new_sample() -> dict:
    return {"sequence_plan": [], "text_ids_list": [], "image_tensor_list": [], "num_tokens": 0}


def plan_item(kind: str, enable_cfg: int, loss: int) -> dict:
    return {
        "type": kind,
        "enable_cfg": int(enable_cfg),
        "loss": int(loss),
        "special_token_loss": 0,
        "special_token_label": None,
    }


class SampleBuilder:
    """Appends text / images to a sample the way upstream's interleaved datasets do.

    ``transform`` produces VAE-side tensors (stride 16), ``vit_transform`` ViT-side tensors (stride 14).
    Both are applied to the same decoded image (the ViT never sees the VAE-resized image in training).
    """

    def __init__(self, tokenizer, transform: ImageTransform | None, vit_transform: ImageTransform | None):
        self.tokenizer = tokenizer
        self.transform = transform
        self.vit_transform = vit_transform

    def add_text(self, sample: dict, text: str, need_loss: bool, enable_cfg: bool = True) -> dict:
        ids = encode(self.tokenizer, text)
        sample["num_tokens"] += len(ids)
        sample["text_ids_list"].append(ids)
        sample["sequence_plan"].append(plan_item("text", enable_cfg, need_loss))
        return sample

    def add_image(
        self,
        sample: dict,
        image: Image.Image,
        need_loss: bool,
        need_vae: bool,
        need_vit: bool,
        enable_cfg: bool = True,
        img_num: int = 1,
    ) -> dict:
        """Order of the added items: noisy target (loss), clean VAE condition, ViT condition."""
        if not (need_loss or need_vae or need_vit):
            raise ValueError("add_image needs at least one of need_loss / need_vae / need_vit")
        if need_loss:
            # a generation target never gets CFG dropout
            self._add_tensor(sample, self._vae(image, img_num), plan_item("vae_image", 0, 1), self.transform)
        if need_vae:
            self._add_tensor(
                sample, self._vae(image, img_num), plan_item("vae_image", enable_cfg, 0), self.transform
            )
        if need_vit:
            if self.vit_transform is None:
                raise ValueError("this dataset has no vit_image_transform_args but needs ViT images")
            tensor = self.vit_transform(image, img_num=img_num)
            self._add_tensor(sample, tensor, plan_item("vit_image", enable_cfg, 0), self.vit_transform)
        return sample

    def _vae(self, image: Image.Image, img_num: int):
        if self.transform is None:
            raise ValueError("this dataset has no image_transform_args but needs VAE images")
        return self.transform(image, img_num=img_num)

    @staticmethod
    def _add_tensor(sample: dict, tensor, item: dict, transform: ImageTransform) -> None:
        height, width = tensor.shape[1:]
        sample["num_tokens"] += width * height // transform.stride**2
        sample["image_tensor_list"].append(tensor)
        sample["sequence_plan"].append(item)
