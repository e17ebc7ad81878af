"""Image path resolution and validation, shared by ingestion and feature extraction."""

from __future__ import annotations

import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from pipeline.atomic import atomic_path


def resolve_inside(base: Path, relative: str) -> Path | None:
    """``base / relative`` if it stays inside ``base`` (after resolving links), else None."""
    base = base.resolve()
    candidate = (base / relative).resolve()
    if candidate == base or base not in candidate.parents:
        return None
    return candidate


def find_image_file(image_dir: Path, name: str) -> Path:
    """The file for ``name`` in ``image_dir``, following the MIMIC loaders' convention.

    The public releases converted every image to JPEG but kept the original names in
    the records, so ``x.png`` may be stored as ``x.jpg``. The exact name wins when it
    exists. The caller has already checked that ``name`` stays inside ``image_dir``.
    """
    exact = image_dir / name
    if exact.is_file():
        return exact
    as_jpeg = exact.with_name(exact.stem + ".jpg")
    return as_jpeg if as_jpeg.is_file() else exact


def image_problem(data: bytes) -> str | None:
    """Why these bytes cannot be used as an image, or None when they decode."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width < 1 or height < 1:
                    return f"image has an empty size {width}x{height}"
                # JPEGs decode at a reduced scale here: the whole stream is still read
                # (truncation is caught) at a fraction of the cost.
                image.draft("RGB", (64, 64))
                image.load()
    except Image.DecompressionBombError as error:
        return f"image too large to decode safely ({error})"
    except UnidentifiedImageError:
        return "not an image file (unrecognised format)"
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        return f"corrupt image ({error})"
    return None


def check_image_file(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "image file does not exist"
    except OSError as error:
        return f"image file cannot be read ({error.strerror})"
    return image_problem(data)


class ImageCheckCache:
    """Validation results keyed by content digest, so unchanged images are decoded once."""

    def __init__(self, store: Path):
        self.store = Path(store)
        self.results: dict[str, str] = {}
        self.checked = 0
        if self.store.is_file():
            table = pq.read_table(self.store).to_pydict()
            self.results = dict(zip(table["digest"], table["problem"]))

    def check_many(self, files: dict[str, Path]) -> dict[str, str | None]:
        """Map digest -> problem (None when fine) for ``{digest: path}``."""
        todo = {digest: path for digest, path in files.items() if digest not in self.results}
        workers = min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes without the GIL
            for digest, problem in zip(todo, pool.map(check_image_file, todo.values())):
                self.results[digest] = problem or ""
        self.checked += len(todo)
        return {digest: (self.results[digest] or None) for digest in files}

    def save(self) -> None:
        digests = sorted(self.results)
        table = pa.table({"digest": digests, "problem": [self.results[d] for d in digests]})
        with atomic_path(self.store) as temp:
            pq.write_table(table, temp)
