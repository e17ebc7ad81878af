"""Procedural entity pictures: a visual signature per entity, KB renderings, mention views.

An entity "looks like" its signature: a foreground shape in a saturated colour
on a textured pastel background, optionally with a small accent shape in a
corner.  The texture family loosely follows the entity's kind (rivers get
waves, cities grids...), so an image hints at the kind as a photo would, while
the shape and colours identify the individual.  Same-kind entities that share
a name get signatures that differ only partly (same shape, other colour, or
the reverse), which is what makes image evidence necessary but not trivial.

KB images are clean renderings with small variations; mention images are
altered views (rotation, crop, rescale, flip, colour shift, noise) of a fresh
rendering, so no mention image equals a KB image byte for byte or pixel for pixel.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import asdict, dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

CANVAS = 160  # drawing resolution; saved images are downsampled (anti-aliasing)
KB_IMAGE_SIZE = 112
MENTION_SIZE_RANGE = (96, 128)
JPEG_QUALITY = 85

SHAPES = ("circle", "ring", "square", "diamond", "triangle", "hexagon", "star", "cross", "crescent")
TEXTURES = ("stripes", "waves", "dots", "checker", "grid", "gradient", "blotches")
CORNERS = ("nw", "ne", "sw", "se")

FOREGROUND_COLOURS = {  # saturated, pairwise far apart
    "red": (215, 35, 35), "orange": (245, 125, 10), "yellow": (240, 225, 40),
    "green": (35, 160, 55), "teal": (0, 140, 150), "blue": (40, 85, 215),
    "navy": (20, 30, 110), "purple": (125, 45, 175), "magenta": (215, 40, 165),
    "brown": (120, 70, 25), "black": (20, 20, 20),
}
BACKGROUND_COLOURS = {  # pastel, so the foreground dominates its region
    "cream": (242, 232, 205), "pale_blue": (205, 222, 242), "pale_green": (208, 236, 208),
    "light_grey": (218, 218, 218), "sand": (228, 210, 168), "lavender": (228, 214, 242),
    "peach": (250, 218, 198), "mint": (204, 242, 232),
}
TEXTURE_INK_FACTOR = 0.78  # texture lines are a darker shade of the background


@dataclass(frozen=True)
class VisualSignature:
    shape: str
    fg_colour: str
    bg_colour: str
    texture: str
    texture_angle: int  # degrees
    accent_shape: str | None
    accent_colour: str | None
    accent_corner: str | None

    def describe(self) -> str:
        accent = f", small {self.accent_colour} {self.accent_shape} ({self.accent_corner})" if self.accent_shape else ""
        return f"{self.fg_colour} {self.shape} on {self.bg_colour} {self.texture}@{self.texture_angle}°{accent}"

    def as_record(self) -> dict:
        record = asdict(self)
        record["fg_rgb"] = list(FOREGROUND_COLOURS[self.fg_colour])
        record["bg_rgb"] = list(BACKGROUND_COLOURS[self.bg_colour])
        return record


def random_signature(rng: random.Random, textures: tuple[str, ...]) -> VisualSignature:
    # Kind's preferred textures most of the time, any texture sometimes (photos vary too).
    texture = rng.choice(textures) if rng.random() < 0.8 else rng.choice(TEXTURES)
    fg = rng.choice(sorted(FOREGROUND_COLOURS))
    has_accent = rng.random() < 0.6
    accent_colour = rng.choice([c for c in sorted(FOREGROUND_COLOURS) if c != fg]) if has_accent else None
    return VisualSignature(
        shape=rng.choice(SHAPES),
        fg_colour=fg,
        bg_colour=rng.choice(sorted(BACKGROUND_COLOURS)),
        texture=texture,
        texture_angle=rng.randrange(0, 180, 15),
        accent_shape=rng.choice(SHAPES[:6]) if has_accent else None,
        accent_colour=accent_colour,
        accent_corner=rng.choice(CORNERS) if has_accent else None,
    )


def near_twin_signature(rng: random.Random, original: VisualSignature) -> VisualSignature:
    """A signature that shares most of `original`: only the shape, or only the colour (and accent), differs."""
    mode = rng.choice(("colour", "shape", "colour_and_accent"))
    if mode == "shape":
        return replace(original, shape=rng.choice([s for s in SHAPES if s != original.shape]))
    fg = rng.choice([c for c in sorted(FOREGROUND_COLOURS) if c not in (original.fg_colour, original.accent_colour)])
    twin = replace(original, fg_colour=fg)
    if mode == "colour_and_accent" and original.accent_shape:  # drop the accent
        twin = replace(twin, accent_shape=None, accent_colour=None, accent_corner=None)
    elif mode == "colour_and_accent":  # add one, in the original's colour
        twin = replace(twin, accent_shape="circle", accent_colour=original.fg_colour, accent_corner=rng.choice(CORNERS))
    return twin


def differences(a: VisualSignature, b: VisualSignature) -> list[str]:
    return [name for name, value in asdict(a).items() if asdict(b)[name] != value]


# ---------------------------------------------------------------- drawing

Points = list[tuple[float, float]]


def _polygon(points: Points, cx: float, cy: float, radius: float, angle: float) -> Points:
    cos_a, sin_a = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return [(cx + radius * (x * cos_a - y * sin_a), cy + radius * (x * sin_a + y * cos_a)) for x, y in points]


def _regular(n: int, start: float = -90.0) -> Points:
    angles = [math.radians(start + 360 * i / n) for i in range(n)]
    return [(math.cos(a), math.sin(a)) for a in angles]


def _star(points: int = 5, inner: float = 0.45) -> Points:
    outer = _regular(2 * points)
    return [(x * (1 if i % 2 == 0 else inner), y * (1 if i % 2 == 0 else inner)) for i, (x, y) in enumerate(outer)]


_CROSS = [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3),
          (0.3, 1), (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)]
_OUTLINES = {
    "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "diamond": [(0, -1), (0.62, 0), (0, 1), (-0.62, 0)],
    "triangle": _regular(3),
    "hexagon": _regular(6),
    "star": _star(),
    "cross": _CROSS,
}


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float, angle: float) -> None:
    """Draw `shape` as 255 on an 'L' mask (0 punches holes)."""
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "ring":
        draw.ellipse(box, fill=255)
        inner = radius * 0.55
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    elif shape == "crescent":
        draw.ellipse(box, fill=255)
        dx, dy = 0.45 * radius * math.cos(math.radians(angle)), 0.45 * radius * math.sin(math.radians(angle))
        cut = radius * 0.85
        draw.ellipse((cx + dx - cut, cy + dy - cut, cx + dx + cut, cy + dy + cut), fill=0)
    else:
        draw.polygon(_polygon(_OUTLINES[shape], cx, cy, radius, angle), fill=255)


# Texture periods below are in units of a 192-pixel canvas, whatever CANVAS is.
_GRID = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32) * (192 / CANVAS)


def _texture_mask(texture: str, angle: float, phase: float, rng: np.random.Generator) -> np.ndarray:
    """Ink coverage in [0, 1] for a CANVAS x CANVAS background."""
    yy, xx = _GRID
    cos_a, sin_a = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    u = xx * cos_a + yy * sin_a + phase
    v = -xx * sin_a + yy * cos_a + phase
    if texture == "stripes":
        return ((u // 18) % 2).astype(np.float32)
    if texture == "waves":
        return (((u + 9 * np.sin(v / 14)) // 16) % 2).astype(np.float32)
    if texture == "dots":
        du, dv = (u % 28) - 14, (v % 28) - 14
        return (du * du + dv * dv < 36).astype(np.float32)
    if texture == "checker":
        return (((u // 32) + (v // 32)) % 2).astype(np.float32)
    if texture == "grid":
        return (((u % 30) < 4) | ((v % 30) < 4)).astype(np.float32)
    if texture == "gradient":
        return (u - u.min()) * (1.0 / max(float(u.max() - u.min()), 1.0))
    if texture == "blotches":  # smooth low-frequency noise: compresses well, unlike pixel noise
        coarse = Image.fromarray((rng.random((6, 6)) * 255).astype(np.uint8), "L")
        return np.asarray(coarse.resize((CANVAS, CANVAS), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    raise ValueError(f"unknown texture {texture!r}")


def render_canvas(signature: VisualSignature, rng: np.random.Generator, jitter: float = 1.0) -> Image.Image:
    """One clean rendering at CANVAS resolution; `jitter` scales the per-rendering variation."""
    bg = BACKGROUND_COLOURS[signature.bg_colour]
    ink = tuple(int(channel * TEXTURE_INK_FACTOR) for channel in bg)
    coverage = _texture_mask(signature.texture, signature.texture_angle + jitter * rng.uniform(-8, 8),
                             float(rng.uniform(0, 40)), rng)
    image = Image.new("RGB", (CANVAS, CANVAS), bg)
    image.paste(ink, mask=Image.fromarray((coverage * 255).astype(np.uint8), "L"))

    mask = Image.new("L", (CANVAS, CANVAS), 0)
    centre = CANVAS / 2 + jitter * CANVAS * 0.05 * rng.uniform(-1, 1, size=2)
    radius = CANVAS * 0.33 * (1 + jitter * rng.uniform(-0.08, 0.08))
    _draw_shape(ImageDraw.Draw(mask), signature.shape, float(centre[0]), float(centre[1]), radius,
                jitter * float(rng.uniform(-12, 12)))
    image.paste(FOREGROUND_COLOURS[signature.fg_colour], mask=mask)

    if signature.accent_shape:
        accent = Image.new("L", (CANVAS, CANVAS), 0)
        ax = CANVAS * (0.14 if "w" in signature.accent_corner else 0.86)
        ay = CANVAS * (0.14 if "n" in signature.accent_corner else 0.86)
        _draw_shape(ImageDraw.Draw(accent), signature.accent_shape, ax, ay, CANVAS * 0.1, 0.0)
        image.paste(FOREGROUND_COLOURS[signature.accent_colour], mask=accent)
    return image


def kb_image(signature: VisualSignature, rng: np.random.Generator) -> Image.Image:
    return render_canvas(signature, rng, jitter=0.5).resize((KB_IMAGE_SIZE, KB_IMAGE_SIZE), Image.Resampling.LANCZOS)


@dataclass(frozen=True)
class MentionView:
    """How a mention photo deviates from the entity's canonical look (recorded in truth.jsonl)."""

    rotation: float  # degrees
    crop: tuple[int, int, int, int]  # box on the CANVAS-sized rendering
    size: int
    flipped: bool
    brightness: float
    channel_shift: tuple[int, int, int]
    noise_sigma: float


def random_view(rng: random.Random) -> MentionView:
    side = int(CANVAS * rng.uniform(0.6, 0.9))
    left, top = rng.randint(0, CANVAS - side), rng.randint(0, CANVAS - side)
    return MentionView(
        rotation=round(rng.uniform(-30, 30), 1),
        crop=(left, top, left + side, top + side),
        size=rng.randint(*MENTION_SIZE_RANGE),
        flipped=rng.random() < 0.3,
        brightness=round(rng.uniform(0.9, 1.1), 3),
        channel_shift=(rng.randint(-12, 12), rng.randint(-12, 12), rng.randint(-12, 12)),
        noise_sigma=round(rng.uniform(3, 10), 2),
    )


def mention_image(signature: VisualSignature, view: MentionView, rng: np.random.Generator) -> Image.Image:
    canvas = render_canvas(signature, rng)
    canvas = canvas.rotate(view.rotation, resample=Image.Resampling.BILINEAR,
                           fillcolor=BACKGROUND_COLOURS[signature.bg_colour])
    picture = canvas.crop(view.crop).resize((view.size, view.size), Image.Resampling.LANCZOS)
    if view.flipped:
        picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(picture, dtype=np.float32) * view.brightness + np.array(view.channel_shift, dtype=np.float32)
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * view.noise_sigma
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
