"""Bad input: every odd image or text is encoded correctly or recorded with its reason, never a crash."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pipeline.features import FeatureStore, Items, extract_features
from pipeline.features import EncoderSpec
from pipeline.features.images import ImageRejected, decode_image, load_item_image
from pipeline.hashing import hash_bytes

MODEL_INPUT = (224, 224)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_of_zeros(width: int, height: int) -> bytes:
    """A valid grayscale PNG written row by row, so a 20000x20000 one takes no 400 MB image in memory."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    compressor, rows = zlib.compressobj(1), b"\x00" * (width + 1) * 1000
    body = b"".join(compressor.compress(rows) for _ in range(height // 1000)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def huge_jpeg() -> bytes:
    return encoded(Image.new("L", (20000, 20000), 128), "JPEG", quality=50)


@pytest.fixture(scope="module")
def samples(huge_jpeg) -> dict[str, bytes]:
    photo = encoded(Image.new("RGB", (300, 200), (10, 120, 200)), "JPEG")
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([255, 0, 0] * 256)
    deep = Image.new("I;16", (16, 16))
    deep.putpixel((0, 0), 65535)
    rotated = Image.new("RGB", (60, 20), (0, 200, 0))
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    return {
        "photo": photo,
        "truncated_jpeg": photo[: len(photo) // 2],
        "corrupt_bytes": b"\xff\xd8\xff\xe0 this is not really a jpeg",
        "text_file": b"hello, I am a text file",
        "png_with_alpha": encoded(Image.new("RGBA", (40, 40), (255, 0, 0, 0)), "PNG"),
        "palette_with_transparency": encoded(palette, "PNG", transparency=0),
        "grayscale_jpeg": encoded(Image.new("L", (40, 30), 77), "JPEG"),
        "cmyk_jpeg": encoded(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"),
        "sixteen_bit_png": encoded(deep, "PNG"),
        "one_pixel": encoded(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"),
        "exif_rotated": encoded(rotated, "JPEG", exif=exif),
        "huge_jpeg": huge_jpeg,
        "huge_png": png_of_zeros(20000, 20000),
    }


@pytest.mark.parametrize(
    ("name", "size", "corner"),
    [
        ("photo", (300, 200), None),
        ("png_with_alpha", (40, 40), (255, 255, 255)),  # transparent red becomes the white page
        ("palette_with_transparency", (16, 16), (255, 255, 255)),
        ("grayscale_jpeg", (40, 30), (77, 77, 77)),
        ("cmyk_jpeg", (40, 30), None),
        ("sixteen_bit_png", (16, 16), (255, 255, 255)),
        ("one_pixel", (1, 1), (1, 2, 3)),
        ("exif_rotated", (20, 60), None),
        ("huge_jpeg", (2500, 2500), (128, 128, 128)),  # decoded at 1/8 scale, never at 400 Mpx
    ],
)
def test_unusual_images_decode_to_rgb(samples, name, size, corner):
    image = decode_image(samples[name], MODEL_INPUT)

    assert image.mode == "RGB" and image.size == size
    if corner is not None:
        assert image.getpixel((0, 0)) == corner


def test_cmyk_colours_survive_the_conversion(samples):
    red, green, blue = decode_image(samples["cmyk_jpeg"], MODEL_INPUT).getpixel((5, 5))
    assert red > 200 and green < 60 and blue < 60  # C=0 M=255 Y=255 K=0 is red


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("truncated_jpeg", "corrupt_image"),
        ("corrupt_bytes", "corrupt_image"),
        ("text_file", "not_an_image"),
        ("huge_png", "image_too_large"),  # no reduced-scale decoding: refused before decoding
    ],
)
def test_unusable_images_are_rejected_with_a_reason(samples, name, code):
    with pytest.raises(ImageRejected) as rejected:
        decode_image(samples[name], MODEL_INPUT)
    assert rejected.value.code == code and rejected.value.detail


def test_a_missing_or_changed_file_is_a_transient_failure(tmp_path, samples):
    path = tmp_path / "photo.jpg"
    path.write_bytes(samples["photo"])

    missing = load_item_image(tmp_path / "gone.jpg", None, MODEL_INPUT)
    changed = load_item_image(path, hash_bytes(b"the bytes ingestion saw"), MODEL_INPUT)
    fine = load_item_image(path, hash_bytes(samples["photo"]), MODEL_INPUT)

    assert (missing.code, missing.retry) == ("image_missing", True)
    assert (changed.code, changed.retry) == ("image_changed", True)
    assert fine.image is not None and fine.code is None


def test_extraction_encodes_or_records_every_bad_input(tmp_path, samples):
    names = list(samples)
    paths = []
    for name in names:
        paths.append(tmp_path / f"{name}.img")
        paths[-1].write_bytes(samples[name])
    items = Items(
        kind="entity",
        ids=names + ["empty_text", "long_text", "missing_file"],
        texts=[f"{name} [SEP] an entity" for name in names] + ["", "word " * 400, "missing [SEP] file"],
        image_files=[str(p) for p in paths] + [None, None, str(tmp_path / "nowhere.jpg")],
        image_digests=[hash_bytes(samples[n]) for n in names] + [None, None, "0" * 32],
        recipe={"kind": "entity"},
    )

    report = extract_features(items, tmp_path / "store", EncoderSpec(batch_size=8, num_workers=2))

    store = FeatureStore.open(tmp_path / "store")
    issues = {(row["id"], row["code"]) for row in store.issues.to_pylist()}
    assert issues == {
        ("truncated_jpeg", "corrupt_image"), ("corrupt_bytes", "corrupt_image"), ("text_file", "not_an_image"),
        ("huge_png", "image_too_large"), ("missing_file", "image_missing"),
        ("empty_text", "empty_text"), ("long_text", "text_truncated"),
    }
    failed_images = {item for item, code in issues if code.startswith(("corrupt", "not_an", "image_"))}
    has_image = dict(zip(store.ids.tolist(), store.has_image.tolist()))
    assert {item for item, flag in has_image.items() if not flag} == failed_images | {"empty_text", "long_text"}
    assert report.issues_by_code["corrupt_image"] == 2
    batch = store.take(store.row_of(items.ids))
    assert np.isfinite(batch.image_tokens.float().numpy()).all()
    assert batch.text_embeds.abs().amax(dim=1).min() > 0 and batch.image_embeds.abs().amax(dim=1).min() > 0
