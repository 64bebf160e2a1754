"""ShapeWorld rendering: palettes, shape geometry and deterministic PIL drawing.

Everything the judge (eval/shapeworld.py) needs to know about the world lives here: the subject palette,
the darker "pattern shade" of every subject colour, the background palette, the shape outlines and the
size fractions. Images are drawn at ``SUPERSAMPLE``× resolution and box-filtered down, so edges are
anti-aliased but the result depends only on the inputs (same inputs → same bytes).

Coordinates: a subject is placed by its bounding-box centre ``(x, y)`` given as fractions of the image
side; its bounding box is a square of side ``SIZE_FRACTIONS[size] * image_size`` that every shape fills
exactly (widest and tallest extent touch the box).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")
# Shapes the standard world never draws: a new concept to teach a trained model (make_shapeworld
# --novel_shape, the LoRA experiment in docs/finetune.md). The judge knows one only on cases that use it.
NOVEL_SHAPES: tuple[str, ...] = ("heart",)
PATTERNS: tuple[str, ...] = ("solid", "striped", "dotted")
# Side of a subject's bounding box as a fraction of the image side.
SIZE_FRACTIONS: dict[str, float] = {"small": 0.2, "large": 0.28}
SIZES: tuple[str, ...] = tuple(SIZE_FRACTIONS)

# Saturated subject colours, pairwise >= ~80 apart in RGB and >= ~120 from every background colour.
SUBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 125, 0),
    "yellow": (235, 205, 0),
    "green": (30, 150, 50),
    "blue": (30, 70, 220),
    "purple": (130, 40, 190),
    "pink": (230, 60, 170),
}
# Stripes and dots are drawn in a dark shade of the subject colour, so a patterned subject is still a
# single connected foreground blob and its colour stays identifiable.
SHADE_FACTOR = 0.35

# Light background colours (scenes, reference backdrops), pairwise >= ~69 apart.
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "gray": (150, 150, 150),
    "azure": (135, 195, 245),
    "mint": (160, 230, 170),
    "sand": (235, 215, 150),
    "rose": (245, 175, 205),
}
TEXTURES: tuple[str, ...] = ("plain", "grid", "checker")
DEFAULT_BACKGROUND = "white"  # target background when the instruction requests no scene

SUPERSAMPLE = 4
_STAR_INNER = 0.5  # inner / outer radius of the five-pointed star
_CROSS_ARM = 0.36  # arm thickness of the cross as a fraction of its box


def shade_of(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """The dark pattern colour drawn on a subject of colour ``rgb``."""
    return tuple(int(round(c * SHADE_FACTOR)) for c in rgb)


@dataclass(frozen=True)
class Subject:
    """One ShapeWorld subject: its identity is the (shape, colour, pattern, size) tuple."""

    shape: str
    colour: str
    pattern: str
    size: str

    def __post_init__(self) -> None:
        for value, allowed, name in (
            (self.shape, SHAPES + NOVEL_SHAPES, "shape"),
            (self.colour, tuple(SUBJECT_COLOURS), "colour"),
            (self.pattern, PATTERNS, "pattern"),
            (self.size, SIZES, "size"),
        ):
            if value not in allowed:
                raise ValueError(f"unknown subject {name} {value!r}; expected one of {allowed}")

    def description(self) -> str:
        """Full natural-language description, e.g. ``"a large red striped triangle"``."""
        return f"a {self.size} {self.colour} {self.pattern} {self.shape}"

    def to_dict(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "pattern": self.pattern, "size": self.size}


@dataclass(frozen=True)
class Background:
    colour: str
    texture: str = "plain"

    def __post_init__(self) -> None:
        if self.colour not in BACKGROUND_COLOURS:
            raise ValueError(
                f"unknown background colour {self.colour!r}; expected one of {tuple(BACKGROUND_COLOURS)}"
            )
        if self.texture not in TEXTURES:
            raise ValueError(f"unknown background texture {self.texture!r}; expected one of {TEXTURES}")

    def to_dict(self) -> dict:
        return {"colour": self.colour, "texture": self.texture}


@dataclass(frozen=True)
class Placement:
    """A subject placed with its bounding-box centre at ``(x, y)`` (fractions of the image side)."""

    subject: Subject
    x: float
    y: float


def _fit_unit_box(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Scale and shift polygon vertices so that their bounding box is exactly [0, 1]²."""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, y0, w, h = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
    return [((px - x0) / w, (py - y0) / h) for px, py in pts]


def unit_polygon(shape: str) -> list[tuple[float, float]]:
    """Outline of ``shape`` as polygon vertices in the unit box [0, 1]² (y down), filling the box.

    Circles are drawn as ellipses and have no polygon (returns ``[]``).
    """
    if shape == "circle":
        return []
    if shape == "square":
        return [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    if shape == "triangle":
        return [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]
    if shape == "diamond":
        return [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)]
    if shape == "cross":
        a, b = (1 - _CROSS_ARM) / 2, (1 + _CROSS_ARM) / 2
        return [
            (a, 0),
            (b, 0),
            (b, a),
            (1, a),
            (1, b),
            (b, b),
            (b, 1),
            (a, 1),
            (a, b),
            (0, b),
            (0, a),
            (a, a),
        ]
    if shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else _STAR_INNER
            ang = math.radians(-90 + 36 * k)
            pts.append((r * math.cos(ang), r * math.sin(ang)))
        return _fit_unit_box(pts)
    if shape == "heart":
        # The classic parametric heart (two lobes on top, a point at the bottom), 48 vertices.
        pts = []
        for k in range(48):
            a = 2 * math.pi * k / 48
            pts.append(
                (
                    16 * math.sin(a) ** 3,
                    -(13 * math.cos(a) - 5 * math.cos(2 * a) - 2 * math.cos(3 * a) - math.cos(4 * a)),
                )
            )
        return _fit_unit_box(pts)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES + NOVEL_SHAPES}")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill) -> None:
    """``shape`` filling ``box`` (x0, y0, x1, y1) with ``fill``; also used by ``data/tiny_data.py``."""
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
        return
    draw.polygon([(x0 + u * (x1 - x0), y0 + v * (y1 - y0)) for u, v in unit_polygon(shape)], fill=fill)


@lru_cache(maxsize=8192)
def shape_mask(shape: str, width: int, height: int, blur: float = 0.0) -> np.ndarray:
    """Boolean mask of ``shape`` stretched to fill a ``width``×``height`` box, seen through a blur.

    The shape is drawn with the same supersampling as images, optionally blurred by a Gaussian of
    ``blur`` output pixels, box-filtered down and thresholded at 50% coverage; the result is cropped to
    its own bounding box (for ``blur=0`` that is the ``(height, width)`` box; a blur rounds corners and
    loses thin tips, so the crop is smaller). The judge uses these as shape templates.
    """
    ss = SUPERSAMPLE
    pad = int(math.ceil(3 * blur)) + 1
    cw, ch = width + 2 * pad, height + 2 * pad
    canvas = Image.new("L", (cw * ss, ch * ss), 0)
    box = (pad * ss, pad * ss, (pad + width) * ss - 1, (pad + height) * ss - 1)
    draw_shape(ImageDraw.Draw(canvas), shape, box, 255)
    if blur > 0:
        canvas = canvas.filter(ImageFilter.GaussianBlur(blur * ss))
    mask = np.asarray(canvas.resize((cw, ch), Image.BOX)) >= 128
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return np.zeros((0, 0), dtype=bool)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _draw_background(size: int, background: Background) -> Image.Image:
    ss = SUPERSAMPLE
    rgb = BACKGROUND_COLOURS[background.colour]
    img = Image.new("RGB", (size * ss, size * ss), rgb)
    if background.texture == "plain":
        return img
    draw = ImageDraw.Draw(img)
    cell = size * ss / 8
    if background.texture == "grid":
        # 1-pixel lines, 10% darker, every 1/8 of the side: visible but far from any subject colour.
        line = tuple(int(round(c * 0.9)) for c in rgb)
        for k in range(1, 8):
            p = int(round(k * cell))
            draw.rectangle((p, 0, p + ss - 1, size * ss - 1), fill=line)
            draw.rectangle((0, p, size * ss - 1, p + ss - 1), fill=line)
    else:  # checker
        dark = tuple(int(round(c * 0.94)) for c in rgb)
        for i in range(8):
            for j in range(8):
                if (i + j) % 2:
                    box = (
                        int(round(i * cell)),
                        int(round(j * cell)),
                        int(round((i + 1) * cell)) - 1,
                        int(round((j + 1) * cell)) - 1,
                    )
                    draw.rectangle(box, fill=dark)
    return img


def _pattern_layer(
    subject: Subject, box: tuple[float, float, float, float], layer_size: tuple[int, int]
) -> Image.Image:
    """RGB layer of ``layer_size``: subject colour with its stripes/dots inside ``box`` (layer coords)."""
    base = SUBJECT_COLOURS[subject.colour]
    dark = shade_of(base)
    layer = Image.new("RGB", layer_size, base)
    x0, y0, x1, y1 = box
    d = x1 - x0
    draw = ImageDraw.Draw(layer)
    if subject.pattern == "striped":
        # Five horizontal bands: base, dark, base, dark, base.
        for k in (1, 3):
            draw.rectangle((x0, y0 + k * d / 5, x1, y0 + (k + 1) * d / 5 - 1), fill=dark)
    elif subject.pattern == "dotted":
        # 3×3 grid of dots; the middle dot sits on the box centre so every shape shows at least one.
        step, radius = d / 3, 0.11 * d
        for i in range(3):
            for j in range(3):
                cx, cy = x0 + (i + 0.5) * step, y0 + (j + 0.5) * step
                draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=dark)
    return layer


def subject_box(placement: Placement, size: int) -> tuple[float, float, float, float]:
    """Bounding box ``(x0, y0, x1, y1)`` in pixels of a placed subject in a ``size``×``size`` image."""
    d = SIZE_FRACTIONS[placement.subject.size] * size
    cx, cy = placement.x * size, placement.y * size
    return (cx - d / 2, cy - d / 2, cx + d / 2, cy + d / 2)


def render_image(size: int, background: Background, placements: list[Placement] | tuple = ()) -> Image.Image:
    """Render a ``size``×``size`` RGB image: ``background`` plus each placed subject (drawn in order).

    Raises ValueError if ``size`` is not a positive multiple of 16 or a subject leaves the image.
    """
    if size <= 0 or size % 16:
        raise ValueError(f"image size must be a positive multiple of 16, got {size}")
    ss = SUPERSAMPLE
    img = _draw_background(size, background)
    for placement in placements:
        x0, y0, x1, y1 = subject_box(placement, size)
        if x0 < 0 or y0 < 0 or x1 > size or y1 > size:
            raise ValueError(
                f"subject {placement.subject} at ({placement.x:.3f}, {placement.y:.3f}) leaves the image"
            )
        # Draw on a small layer around the subject (integer offset, so rasterisation is unchanged).
        ox, oy = int(x0 * ss), int(y0 * ss)
        box = (x0 * ss - ox, y0 * ss - oy, x1 * ss - 1 - ox, y1 * ss - 1 - oy)
        layer_size = (int(math.ceil(box[2])) + 2, int(math.ceil(box[3])) + 2)
        mask = Image.new("L", layer_size, 0)
        draw_shape(ImageDraw.Draw(mask), placement.subject.shape, box, 255)
        img.paste(_pattern_layer(placement.subject, box, layer_size), (ox, oy), mask)
    return img.resize((size, size), Image.BOX)


def png_bytes(image: Image.Image) -> bytes:
    """Deterministic PNG encoding (no metadata)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
