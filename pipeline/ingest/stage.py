"""The ingest stage: validate a dataset and write the mentions, entities and quarantine tables.

The stored tables are reused when every input file has the same content as last time (a fingerprint over
the files' content digests, which the file-hash cache keeps by path, size and mtime).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline import catalog
from pipeline.hashing import FileHashCache, hash_strings
from pipeline.images import ImageCheckCache
from pipeline.ingest.kb import KBReader
from pipeline.ingest.layout import SPLITS, DatasetLayout
from pipeline.ingest.mentions import MentionReader
from pipeline.ingest.records import Quarantine
from pipeline.lake import Lake, StoredTable
from pipeline.settings import setting

INGEST_VERSION = "1"  # bump when the reader's output changes for the same input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestSettings:
    """Which dataset to ingest (assets take it from the `DatasetResource`), and whether to ignore reuse."""

    dataset_dir: Path | str = setting(doc="The dataset directory, in the MIMIC layout.")
    force: bool = setting(False, "Read the dataset again even when no input file changed.")


@dataclass(frozen=True)
class IngestReport:
    reused: bool
    fingerprint: str
    stats: dict[str, Any]  # counts per split, nil, images, quarantine reasons; stored with every table
    tables: dict[str, StoredTable]  # catalog.INGEST_TABLES: mentions, entities, quarantine


def ingest_dataset(lake: Lake, settings: IngestSettings, *, logger=log) -> IngestReport:
    """Validate the dataset and write the mentions, entities and quarantine tables.

    Reuses the stored tables when every input file has the same content as last time.
    """
    layout = DatasetLayout.discover(settings.dataset_dir)
    hashes = FileHashCache(lake.state_path(catalog.FILE_HASHES))
    fingerprint = hash_strings([INGEST_VERSION, hashes.fingerprint(layout.input_files(), layout.root)])
    hashes.save()
    if not settings.force and lake.tables_up_to_date(list(catalog.INGEST_TABLES), fingerprint):
        logger.info(f"Inputs unchanged (fingerprint {fingerprint[:12]}): reusing the stored tables.")
        return _report(lake, True, fingerprint, lake.table_extra(catalog.MENTIONS))

    logger.info(f"Reading {layout.root} ({hashes.hashed} files hashed anew).")
    stats = _read_and_write(lake, layout, hashes, fingerprint)
    logger.info(
        f"Wrote {stats['mentions']} mentions, {stats['entities']} entities, "
        f"{stats['quarantined_records']} quarantined records."
    )
    return _report(lake, False, fingerprint, stats)


def _read_and_write(lake: Lake, layout: DatasetLayout, hashes: FileHashCache, fingerprint: str) -> dict[str, Any]:
    """Read the KB, then the mentions against it; write the three tables with the statistics."""
    images = ImageCheckCache(lake.state_path(catalog.IMAGE_CHECKS))
    kb = KBReader(layout, hashes, images)
    entities = kb.read_entities()
    reader = MentionReader(layout, hashes, images, kb.qid2id, usable_indices=kb.kb_indices)
    mentions = reader.read_splits()
    images.save()
    quarantine = Quarantine(kb.quarantine.rows + reader.quarantine.rows)
    stats = _stats(layout, mentions, entities, quarantine)
    stats["images_decoded"] = images.checked
    for name, table in ((catalog.ENTITIES, entities), (catalog.MENTIONS, mentions),
                        (catalog.QUARANTINE, quarantine.table())):
        lake.write_table(name, table, fingerprint, extra=stats)
    return stats


def _report(lake: Lake, reused: bool, fingerprint: str, stats: dict[str, Any]) -> IngestReport:
    return IngestReport(reused, fingerprint, stats, {name: lake.stored_table(name) for name in catalog.INGEST_TABLES})


def _stats(layout: DatasetLayout, mentions: pa.Table, entities: pa.Table,
          quarantine: Quarantine) -> dict[str, Any]:
    m = mentions.to_pydict()
    splits = Counter(m["split"])
    nil_by_split = Counter(s for s, nil in zip(m["split"], m["is_nil"]) if nil)
    dropped = [r for r in quarantine.rows if r["action"] == "dropped"]
    return {
        "mentions": mentions.num_rows,
        "entities": entities.num_rows,
        **{f"mentions_{split}": splits.get(split, 0) for split in SPLITS},
        **{f"nil_{split}": nil_by_split.get(split, 0) for split in SPLITS},
        "mentions_without_image": m["has_image"].count(False),
        "entities_without_image": entities.column("has_image").to_pylist().count(False),
        "quarantined_records": len(dropped),
        "quarantine_rows": len(quarantine.rows),
        "quarantine_by_reason": dict(sorted(Counter(r["reason_code"] for r in quarantine.rows).items())),
        "dataset_dir": str(layout.root),
    }
