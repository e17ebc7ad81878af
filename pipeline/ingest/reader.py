"""What the KB and mention readers share: the dataset's caches, its quarantine, images and broken records."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from pipeline.hashing import FileHashCache
from pipeline.images import ImageCheckCache, find_image_file, resolve_inside
from pipeline.ingest.layout import DatasetLayout
from pipeline.ingest.records import Quarantine


def first_of_each(sources: Iterable, build_row: Callable[[object, dict], dict | None], key: str) -> list[dict]:
    """The rows `build_row(source, taken)` makes of `sources`, where `taken` maps the `key` of every row kept
    so far to its record_index: a record whose key is taken is a duplicate (the first one wins)."""
    rows, taken = [], {}
    for source in sources:
        row = build_row(source, taken)
        if row is not None:
            taken[row[key]] = row["record_index"]
            rows.append(row)
    return rows


class RecordReader:
    """Reads records of one dataset into rows; what cannot be used goes to `quarantine`."""

    def __init__(self, layout: DatasetLayout, hashes: FileHashCache, images: ImageCheckCache):
        self.layout = layout
        self.hashes = hashes
        self.images = images
        self.quarantine = Quarantine()

    def _escaping_path(self, image_dir: Path, names: list[str], field_name: str):
        for name in names:
            if resolve_inside(image_dir, name) is None:
                return ("path_escape", field_name,
                        f"image path {name!r} points outside {self.layout.relative(image_dir)}/.")
        return None

    def _attach_images(self, rows, column, image_dir, kb_file, many):
        """Resolve, hash and validate images; keep the usable ones, report the rest."""
        files: dict[str, Path] = {}
        resolved: list[list[tuple[str, Path]]] = []
        for row in rows:
            names = row[column] if many else ([row[column]] if row[column] else [])
            paths = [(name, find_image_file(image_dir, name)) for name in names]
            resolved.append(paths)
            for _, path in paths:
                if path.is_file():
                    files.setdefault(str(path), path)
        digest_of = {key: self.hashes.digest(path) for key, path in files.items()}
        problems = self.images.check_many({digest_of[key]: path for key, path in files.items()})
        for row, paths in zip(rows, resolved):
            usable, digests = [], []
            for name, path in paths:
                digest = digest_of.get(str(path))
                problem = "image file does not exist" if digest is None else problems[digest]
                if problem is None:
                    usable.append(self.layout.relative(path))
                    digests.append(digest)
                else:
                    file = kb_file or row["source_file"]
                    record_id = str(row["kb_index"]) if many else row["record_id"]
                    action = "ignored" if many else "kept_without_image"
                    self.quarantine.add(file, row["record_index"], record_id,
                                        "image_list" if many else "imgPath", "bad_image",
                                        f"{self.layout.relative(path)}: {problem}.", action)
            if many:
                row["image_paths"], row["image_digests"] = usable, digests
            else:
                row["image_path"] = usable[0] if usable else None
                row["image_digest"] = digests[0] if digests else None
            row["has_image"] = bool(usable)

    def _quarantine_broken(self, file, broken):
        for item in broken:
            self.quarantine.add(file, item.index, None, None, "malformed_json",
                                f"record {item.index} (line {item.line}): {item.reason}.")
