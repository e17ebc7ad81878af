"""Where a MIMIC-layout dataset keeps its files, and which of them ingestion reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import MELUserError
from pipeline.hashing import list_files, stat_fingerprint

SPLITS = ("train", "dev", "test")
KB_CHANGES_DIR = "inbox/kb"  # KB changes: records {"op": "upsert" | "remove", ...}, see kb.KBReader


@dataclass
class DatasetLayout:
    root: Path
    split_files: dict[str, Path]
    kb_file: Path
    qid2id_file: Path
    kb_image_dir: Path
    mention_image_dir: Path
    kb_change_files: list[Path] = field(default_factory=list)  # inbox/kb/*.json, applied in name order

    @classmethod
    def discover(cls, root: Path | str) -> "DatasetLayout":
        root = Path(root)
        if not root.is_dir():
            raise MELUserError(f"The dataset directory {root} does not exist.")
        root = root.resolve()
        split_files = {split: _find_split_file(root, split) for split in SPLITS}
        kb_file, qid2id_file = root / "kb_entity.json", root / "qid2id.json"
        for required in (kb_file, qid2id_file, root / "kb_image"):
            if not required.exists():
                raise MELUserError(f"The dataset is missing {required}.")
        mention_image_dir = next(
            (root / name for name in ("mention_image", "mention_images") if (root / name).is_dir()),
            None,
        )
        if mention_image_dir is None:
            raise MELUserError(f"The dataset is missing {root / 'mention_image'} (or mention_images).")
        changes = sorted((root / KB_CHANGES_DIR).glob("*.json")) if (root / KB_CHANGES_DIR).is_dir() else []
        return cls(root, split_files, kb_file, qid2id_file, root / "kb_image", mention_image_dir, changes)

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def input_files(self) -> list[Path]:
        """The files ingestion reads; other files in the directory do not matter."""
        files = [*self.split_files.values(), self.kb_file, self.qid2id_file, *self.kb_change_files]
        return files + list_files(self.kb_image_dir) + list_files(self.mention_image_dir)

    def kb_files(self) -> list[Path]:
        """The input files of the KB side alone: a change to these alone leaves the mentions as they are."""
        return [self.kb_file, self.qid2id_file, *self.kb_change_files, *list_files(self.kb_image_dir)]

    def change_fingerprints(self) -> dict[str, str]:
        """Cheap fingerprints (names, sizes, mtimes) of the KB files and of the other input files, apart: what
        changed tells a KB-only refresh from a full one."""
        kb_files = set(self.kb_files())
        return {"kb": stat_fingerprint(kb_files),
                "mentions": stat_fingerprint([path for path in self.input_files() if path not in kb_files])}


def _find_split_file(root: Path, split: str) -> Path:
    matches = sorted(root.glob(f"*_{split}.json"))
    if not matches:
        raise MELUserError(f"The dataset directory {root} has no *_{split}.json file.")
    if len(matches) > 1:
        names = ", ".join(p.name for p in matches)
        raise MELUserError(f"The dataset directory {root} has several {split} files ({names}); keep one.")
    return matches[0]
