"""Reuse across stores: link the committed parts of other feature stores into a writer's ``parts/``.

A writer given ``reuse_from`` (other stores' directories, e.g. the KB shards' stores) first links their
committed parts of the same encoder identity into its own ``parts/``: a hard link, so no feature bytes are
copied on one filesystem (a copy where the filesystem has no links). Their rows are then reusable like its
own, and the links it does not need are deleted with its garbage.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.atomic import atomic_path
from pipeline.errors import MELUserError
from pipeline.features.schema import part_paths, read_manifest


def link_committed_parts(source: Path, root: Path, identity: dict, logger) -> int:
    """Link the committed parts of the store at `source` written by `identity` into `root`'s parts; how many."""
    try:
        manifest = read_manifest(source)
    except (OSError, ValueError, MELUserError) as error:
        logger.warning(f"Not reusing the feature store at {source}: {error}")
        return 0
    if manifest is None or manifest.get("encoder") != identity:
        return 0  # not committed yet, or another encoder: its rows could not be reused anyway
    linked = 0
    for name in manifest["parts"]:
        (source_parquet, source_mirror), (parquet, mirror) = part_paths(source, name), part_paths(root, name)
        if parquet.is_file():
            continue
        try:
            if source_mirror.is_file():  # the mirror first: a part whose Parquet exists has its mirror
                _link_or_copy(source_mirror, mirror)
            _link_or_copy(source_parquet, parquet)
            linked += 1
        except FileNotFoundError:  # that store's writer deleted the part meanwhile: its rows get encoded
            continue
    return linked


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except FileExistsError:
        pass
    except OSError:  # another filesystem, or one without hard links
        with atomic_path(target) as temp:
            shutil.copyfile(source, temp)
