"""Item images -> RGB pictures for the encoder; every bad input becomes a recorded reason, never a crash.

Policy, case by case:

- Corrupt, truncated or non-image bytes: no image (zero image + ``has_image=False``) and the reason.
  The same bytes always fail the same way, so the result is cached like any other.
- A missing file, or bytes whose digest differs from the one the table recorded: no image and the reason,
  flagged ``retry`` so the next run tries again (the table is stale: re-materialize ``entities``/``mentions``).
- Transparency (RGBA, LA, palette with a transparent colour): composited onto white, the page colour the
  logos, flags and icons of Wikimedia are drawn for (dropping alpha would expose arbitrary hidden RGB).
- Grayscale, CMYK, 16-bit and other modes: converted to RGB (16-bit scaled to 8-bit).
- EXIF orientation is applied: camera photos are often stored sideways with a rotation tag.
- Tiny images (1x1): upsampled by the model's preprocessing like any other.
- Huge images: JPEGs decode through libjpeg's DCT scaling (``draft``) at the smallest scale, down to 1/8,
  that keeps both sides at least the model's input size, so a 20000x20000 JPEG decodes as 2500x2500 in
  a fraction of the time and memory. PIL's decompression-bomb check runs on the header size before any
  decoding, so JPEGs are opened by the JPEG plugin directly and the same limit (``Image.MAX_IMAGE_PIXELS``,
  89 Mpx) is applied to the size they decode at. Other formats have no reduced-scale decoding: past the
  limit (e.g. a 20000x20000 PNG, 1.2 GB decoded) they are refused with the reason.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from pipeline.hashing import hash_bytes

JPEG_MAGIC = b"\xff\xd8\xff"


class ImageRejected(Exception):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass
class LoadedImage:
    image: Image.Image | None  # RGB, or None when unusable
    code: str | None = None  # why it is unusable
    detail: str | None = None
    retry: bool = False  # the failure may go away without the item changing: do not cache it


def decode_image(data: bytes, min_size: tuple[int, int]) -> Image.Image:
    """Decode ``data`` to an RGB image, no smaller than ``min_size`` where the source allows.

    Raises ImageRejected with a reason code for anything that cannot be used.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = _open(data)
            width, height = image.size
            if width < 1 or height < 1:
                raise ImageRejected("empty_image", f"image has an empty size {width}x{height}")
            if image.format in ("JPEG", "MPO"):
                image.draft("RGB", min_size)
            limit = Image.MAX_IMAGE_PIXELS
            if limit and image.size[0] * image.size[1] > limit:
                raise ImageRejected(
                    "image_too_large",
                    f"{width}x{height} {image.format} image is above the {limit / 1e6:.0f} Mpx decoding limit",
                )
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as error:
        raise ImageRejected("image_too_large", f"image too large to decode safely ({error})") from None
    except UnidentifiedImageError:
        raise ImageRejected("not_an_image", "not an image file (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as error:
        raise ImageRejected("corrupt_image", f"corrupt image ({error})") from None


def _open(data: bytes) -> Image.Image:
    if data.startswith(JPEG_MAGIC):  # bypasses the header-size bomb check; decode_image checks the draft size
        return JpegImagePlugin.JpegImageFile(io.BytesIO(data))
    return Image.open(io.BytesIO(data))


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        pixels = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(pixels.max()), 1.0)
        image = Image.fromarray((pixels / top * 255.0).clip(0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        background.alpha_composite(image.convert("RGBA"))
        return background.convert("RGB")
    return image.convert("RGB")


def load_item_image(path: str | Path, expected_digest: str | None, min_size: tuple[int, int]) -> LoadedImage:
    """Read, verify and decode one item image; failures come back as a reason, never as an exception."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return LoadedImage(None, "image_missing", f"{path} does not exist (re-materialize the tables)", retry=True)
    except OSError as error:
        return LoadedImage(None, "image_unreadable", f"{path} cannot be read ({error.strerror})", retry=True)
    if expected_digest is not None and hash_bytes(data) != expected_digest:
        return LoadedImage(None, "image_changed",
                           f"{path} changed since ingestion (re-materialize the tables)", retry=True)
    try:
        return LoadedImage(decode_image(data, min_size))
    except ImageRejected as rejected:
        return LoadedImage(None, rejected.code, f"{path}: {rejected.detail}")
