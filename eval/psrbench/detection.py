"""Open-set detection for PSRBench: a `Detector` interface, the Grounding DINO implementation (via
`transformers`) and box cropping with the protocol's integer truncation.

Protocol (docs/psrbench.md): query = category text lower-cased, stripped, with a trailing '.';
box threshold 0.35 on the max token probability, text threshold 0.25 (labels only, never filters boxes);
boxes kept **in decoder-query order** (not re-sorted by score); x1,y1,x2,y2 in original-image pixels,
then `int()`-truncated before cropping `[y1:y2, x1:x2]`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

DEFAULT_DETECTOR = "IDEA-Research/grounding-dino-tiny"
BOX_THRESHOLD = 0.35
TEXT_THRESHOLD = 0.25
# Upstream detector input: shorter side 800, longer side capped at 1333.
PROTOCOL_SIZE = {"shortest_edge": 800, "longest_edge": 1333}


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in pixel coordinates of the image it was detected in (x right, y down)."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float = 1.0

    def truncated(self) -> Box:
        """Coordinates passed through `int()` (truncation toward zero), as the protocol does."""
        return Box(int(self.x1), int(self.y1), int(self.x2), int(self.y2), self.score)

    @property
    def center(self) -> tuple[float, float]:
        return (self.x1 + self.x2) / 2, (self.y1 + self.y2) / 2

    @property
    def area(self) -> float:
        return (self.x2 - self.x1) * (self.y2 - self.y1)

    def as_list(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]


@runtime_checkable
class Detector(Protocol):
    """Anything that finds boxes for an open-vocabulary text query. Boxes in detection order."""

    def detect(self, image: Image.Image, query: str) -> list[Box]: ...


def caption_for(query: str) -> str:
    """Detector caption: lower-cased, stripped, ending with '.' (what upstream's predict() does)."""
    cap = query.lower().strip()
    return cap if cap.endswith(".") else cap + "."


def crop_to_box(image: Image.Image, box: Box) -> Image.Image | None:
    """Crop `image[y1:y2, x1:x2]` with int-truncated coordinates clamped to the image.

    Returns None when the crop is empty (zero width/height). Clamping differs from upstream only for
    boxes reaching beyond the border by a pixel or more, where numpy's negative indices would wrap.
    """
    b = box.truncated()
    w, h = image.size
    x1, x2 = min(max(int(b.x1), 0), w), min(max(int(b.x2), 0), w)
    y1, y2 = min(max(int(b.y1), 0), h), min(max(int(b.y2), 0), h)
    if x2 <= x1 or y2 <= y1:
        return None
    return image.crop((x1, y1, x2, y2))


def crop_like_upstream(image: Image.Image, box: Box) -> Image.Image | None:
    """PSR's own crop: numpy slicing ``array[y1:y2, x1:x2]`` of the image with int-truncated coordinates,
    unclamped, so a coordinate below -1 counts from the far edge (usually an empty crop, sometimes a strip
    of the opposite border). None when the slice is empty."""
    b = box.truncated()
    arr = np.asarray(image)[int(b.y1) : int(b.y2), int(b.x1) : int(b.x2)]
    if arr.size == 0:
        return None
    return Image.fromarray(arr)


def upstream_detector_accepts(image: Image.Image) -> bool:
    """PSR's detector transform needs a 3-channel image: RGBA, palette, greyscale and other modes raised
    there, and its scripts then used the whole image (SC) or scored 0 (position)."""
    return image.mode == "RGB"


class GroundingDinoDetector:
    """Grounding DINO through `transformers` (`GroundingDinoForObjectDetection` + `AutoProcessor`).

    model_name_or_path: local folder or hub id loaded with from_pretrained (default the Swin-T model).
    The image processor's resize settings come from the checkpoint; a warning is logged when they differ
    from the protocol's 800/1333.
    """

    def __init__(
        self,
        model_name_or_path: str = DEFAULT_DETECTOR,
        *,
        device: str | torch.device = "cpu",
        box_threshold: float = BOX_THRESHOLD,
        text_threshold: float = TEXT_THRESHOLD,
    ) -> None:
        from transformers import AutoProcessor, GroundingDinoForObjectDetection

        self.name = str(model_name_or_path)
        self.device = torch.device(device)
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.processor = AutoProcessor.from_pretrained(model_name_or_path)
        self.model = GroundingDinoForObjectDetection.from_pretrained(model_name_or_path)
        self.model.to(self.device).eval()
        size = getattr(self.processor.image_processor, "size", None)
        got = {
            k: getattr(size, k, None) if not isinstance(size, dict) else size.get(k) for k in PROTOCOL_SIZE
        }
        if got != PROTOCOL_SIZE:
            log.warning("detector %s resizes to %s, protocol uses %s", self.name, got, PROTOCOL_SIZE)

    @torch.no_grad()
    def detect(self, image: Image.Image, query: str) -> list[Box]:
        """Boxes for `query` in decoder-query order; xyxy floats in pixels of `image` (not truncated)."""
        # Upstream broke on RGBA/greyscale inputs (then fell back to the whole image); the detector
        # simply sees the RGB version here.
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        inputs = self.processor(images=rgb, text=caption_for(query), return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        w, h = rgb.size
        result = self.processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=self.box_threshold,
            text_threshold=self.text_threshold,
            target_sizes=[(h, w)],
        )[0]
        boxes = []
        for xyxy, score in zip(
            result["boxes"].float().cpu().tolist(), result["scores"].float().cpu().tolist()
        ):
            if not all(math.isfinite(v) for v in xyxy):
                raise ValueError(f"detector {self.name} returned a non-finite box {xyxy} for {query!r}")
            boxes.append(Box(*xyxy, score=float(score)))
        return boxes


class CachedDetector:
    """Memoises `detect` per (image object, detector caption) so a repeated category (same caption,
    e.g. "Dog" and "dog") is detected once per image and gets the same boxes."""

    def __init__(self, detector: Detector) -> None:
        self.detector = detector
        self._cache: dict[tuple[int, str], list[Box]] = {}
        self._keep: list[Image.Image] = []  # keeps ids valid while cached

    def detect(self, image: Image.Image, query: str) -> list[Box]:
        key = (id(image), caption_for(query))
        if key not in self._cache:
            self._cache[key] = list(self.detector.detect(image, query))
            self._keep.append(image)
        return self._cache[key]
