"""Generate the demo dataset into a directory, atomically, and reuse a complete one."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.locks import exclusive_lock, process_alive

from .readme import readme_text, statistics
from .truth import TruthBuilder
from .world import build_world
from .world_types import SPLITS
from .writer import (
    DUMP_PATH,
    defect_records,
    dump_entries,
    dump_text,
    json_list,
    kb_record,
    mention_record,
    search_dump,
    write_images,
)

DEMO_GENERATOR_VERSION = "1"
MARKER = ".complete"
# Everything a generated dataset directory may contain; anything else means "not ours, do not delete".
LAYOUT = frozenset({*(f"demo_{s}.json" for s in SPLITS), "kb_entity.json", "qid2id.json", "kb_image",
                    "mention_image", "wikidata", "README.md", "truth.jsonl", "defects.json", MARKER})


@dataclass(frozen=True)
class DemoSummary:
    out_dir: Path
    seed: int
    kb_entities: int
    mentions: int
    splits: dict[str, int]
    ambiguous_mentions: int  # >= 2 KB entities share the mention's name
    same_kind_mentions: int  # ... and one of them has the gold's kind
    nil_mentions: int
    mentions_without_image: int
    unseen_test_mentions: int  # test mentions whose entity has no train mention
    kb_images: int
    mention_images: int
    dump_items: int
    defects: tuple[str, ...]
    seconds: float = field(default=0.0, compare=False)

    def paragraph(self) -> str:
        splits = "/".join(str(self.splits[s]) for s in SPLITS)
        return (f"Demo dataset in {self.out_dir} (seed {self.seed}): {self.kb_entities} KB entities with "
                f"{self.kb_images} images, {self.mentions} mentions (train/dev/test {splits}); "
                f"{self.ambiguous_mentions} mentions have two or more same-name KB candidates, "
                f"for {self.same_kind_mentions} of them one of the gold's own kind; {self.nil_mentions} are nil, "
                f"{self.mentions_without_image} have no image, {self.unseen_test_mentions} test mentions link to "
                f"entities unseen in train; the WikiData dump fixture holds {self.dump_items} items; "
                f"defects: {', '.join(self.defects) or 'none'}. Generated in {self.seconds:.1f} s.")


def marker_text(seed: int, num_entities: int, num_mentions: int, defects: bool) -> str:
    params = {"defects": defects, "num_entities": num_entities, "num_mentions": num_mentions, "seed": seed,
              "version": DEMO_GENERATOR_VERSION}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
    return json.dumps({"generator_version": DEMO_GENERATOR_VERSION, "params_hash": digest, "params": params},
                      sort_keys=True) + "\n"


def is_complete(out_dir: Path, *, seed: int = 0, num_entities: int = 300, num_mentions: int = 900,
                defects: bool = True) -> bool:
    """True if `out_dir` holds a finished dataset from this generator version with these parameters."""
    marker = Path(out_dir) / MARKER
    expected = marker_text(seed, num_entities, num_mentions, defects)
    return marker.is_file() and marker.read_text(encoding="utf-8") == expected


def ensure_demo_dataset(out_dir: Path, *, seed: int = 0, num_entities: int = 300, num_mentions: int = 900,
                        defects: bool = True) -> Path:
    """Return `out_dir` at once if it holds a complete dataset for these parameters, else (re)generate it."""
    out_dir = Path(out_dir)
    params = dict(seed=seed, num_entities=num_entities, num_mentions=num_mentions, defects=defects)
    if is_complete(out_dir, **params):
        return out_dir
    with _exclusive(out_dir):
        if not is_complete(out_dir, **params):  # another process may have finished it meanwhile
            _generate_locked(out_dir, **params)
    return out_dir


def generate_demo_dataset(out_dir: Path, *, seed: int = 0, num_entities: int = 300, num_mentions: int = 900,
                          defects: bool = True) -> DemoSummary:
    """Write the dataset to `out_dir`, replacing an earlier demo dataset there."""
    out_dir = Path(out_dir)
    with _exclusive(out_dir):
        return _generate_locked(out_dir, seed=seed, num_entities=num_entities, num_mentions=num_mentions,
                                defects=defects)


def _generate_locked(out_dir: Path, *, seed: int, num_entities: int, num_mentions: int, defects: bool) -> DemoSummary:
    if seed < 0:
        raise ValueError("seed must be >= 0")
    _check_replaceable(out_dir)
    started = time.perf_counter()
    _remove_stale_staging(out_dir)
    staging = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        stats = write_dataset(staging, seed=seed, num_entities=num_entities, num_mentions=num_mentions, defects=defects)
        # The marker goes in last: a directory without it is an unfinished generation.
        (staging / MARKER).write_text(marker_text(seed, num_entities, num_mentions, defects), encoding="utf-8")
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return DemoSummary(
        out_dir=out_dir, seed=seed, kb_entities=stats["kb_entities"], mentions=stats["mentions"],
        splits=stats["splits"], ambiguous_mentions=stats["ambiguous_mentions"],
        same_kind_mentions=stats["categories"]["same_kind"], nil_mentions=stats["categories"]["nil"],
        mentions_without_image=stats["mentions_without_image"],
        unseen_test_mentions=stats["unseen_entity_mentions"]["test"], kb_images=stats["kb_images"],
        mention_images=stats["mention_images"], dump_items=stats["dump_items"],
        defects=tuple(d["file"] for d in stats["defects"]), seconds=time.perf_counter() - started)


def write_dataset(out: Path, *, seed: int, num_entities: int, num_mentions: int, defects: bool) -> dict:
    """Write every file except the marker into the existing, empty directory `out`; return statistics."""
    world = build_world(random.Random(seed), num_entities, num_mentions, defects)
    write_images(world, out, seed)
    for split in SPLITS:
        records = [mention_record(m) for m in world.mentions if m.split == split]
        _write(out / f"demo_{split}.json", json_list(records))
    _write(out / "kb_entity.json", json_list([kb_record(e) for e in world.kb]))
    _write(out / "qid2id.json", json.dumps({e.qid: e.index for e in world.kb}) + "\n")

    entries = dump_entries(world)
    (out / DUMP_PATH).parent.mkdir()
    (out / DUMP_PATH).write_bytes(gzip.compress(dump_text(entries).encode("utf-8"), compresslevel=6, mtime=0))

    truth = TruthBuilder(world, search_dump(entries))
    truth_records = [truth.record(m) for m in world.mentions]
    _write(out / "truth.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in truth_records))
    defects_list = defect_records(world)
    _write(out / "defects.json", json_list(defects_list))

    stats = statistics(world, entries)
    params = dict(version=DEMO_GENERATOR_VERSION, seed=seed, num_entities=num_entities,
                  num_mentions=num_mentions, defects=defects)
    example = _pick_example(truth_records)
    _write(out / "README.md", readme_text(world, stats, defects_list, params, example))
    return {**stats, "defects": defects_list}


def _pick_example(truth_records: list[dict]) -> dict | None:
    """Show the hardest kind of record: same-kind namesakes that only the image separates."""
    for evidence in ("image", "description_detail", "context"):
        for record in truth_records:
            if record["decisive_evidence"] == evidence:
                return record
    return truth_records[0] if truth_records else None


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="\n")


# ------------------------------------------------------------------ directory safety

def _check_replaceable(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    foreign = sorted(set(os.listdir(out_dir)) - LAYOUT)
    if foreign:
        raise FileExistsError(f"refusing to replace {out_dir}: it holds files a demo dataset does not "
                              f"({', '.join(foreign[:5])})")


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Rename the finished staging directory to `out_dir`; an old dataset is moved aside first."""
    old = out_dir.with_name(f"{out_dir.name}.tmp-old-{os.getpid()}")
    if out_dir.exists():
        os.rename(out_dir, old)
    os.rename(staging, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _remove_stale_staging(out_dir: Path) -> None:
    """Delete staging directories left by interrupted generations whose process is gone."""
    if not out_dir.parent.is_dir():
        return
    for candidate in out_dir.parent.glob(f"{out_dir.name}.tmp-*"):
        pid = candidate.name.rsplit("-", 1)[-1]
        if candidate.is_dir() and pid.isdigit() and (int(pid) == os.getpid() or not process_alive(int(pid))):
            shutil.rmtree(candidate, ignore_errors=True)


def _exclusive(out_dir: Path):
    """Serialise generations of one directory across processes (e.g. parallel Dagster runs)."""
    return exclusive_lock(out_dir.with_name(f"{out_dir.name}.tmp-lock"))
