"""How the entity index is built and searched: ``IndexSettings``, checked on creation.

Every field carries a one-line description (``pipeline.settings.setting``), from which the Dagster resource that
configures the index stages is generated; a bad value is refused with a ``SettingError`` naming the setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss

from pipeline.settings import refuse, setting

KINDS = ("auto", "flat", "ivf")
GPU_CHOICES = ("auto", "always", "never")
TRAIN_POINTS_PER_LIST = 50  # faiss warns below 39 training points per centroid


@dataclass(frozen=True)
class IndexSettings:
    """How the entity index is built and searched (checked on creation)."""

    kind: str = setting("auto", "'flat' (exact), 'ivf' (approximate), or 'auto': flat up to "
                        "`flat_max_entities` usable entities, IVF past it.")
    flat_max_entities: int = setting(200_000, "Largest KB that 'auto' indexes exactly.")
    nlist: int = setting(0, "IVF lists; 0 = about 4*sqrt(entities).")
    nprobe: int = setting(32, "IVF lists searched per query (recall vs speed).")
    candidates_per_mention: int = setting(100, "Candidates kept per mention, clamped to the KB size.")
    use_gpu: str = setting("auto", "'auto' (when faiss has GPU support and a GPU is present), "
                           "'always' (fail without one) or 'never'.")
    min_recall: float = setting(0.5, "Floor of recall@100 (recall@K when K < 100) on every split; below it "
                                "the candidate_recall_floor check fails (the demo reaches 0.8 to 0.9).")

    def __post_init__(self):
        if self.kind not in KINDS:
            refuse(self, f"kind={self.kind!r} is not one of {', '.join(KINDS)}.")
        if self.use_gpu not in GPU_CHOICES:
            refuse(self, f"use_gpu={self.use_gpu!r} is not one of {', '.join(GPU_CHOICES)}.")
        for name in ("flat_max_entities", "nprobe", "candidates_per_mention"):
            if getattr(self, name) < 1:
                refuse(self, f"{name}={getattr(self, name)} must be at least 1.")
        if self.nlist < 0:
            refuse(self, f"nlist={self.nlist} must be 0 (automatic) or positive.")
        if not 0.0 <= self.min_recall <= 1.0:
            refuse(self, f"min_recall={self.min_recall} must be between 0 and 1.")

    def kind_for(self, entities: int) -> str:
        if self.kind != "auto":
            return self.kind
        return "flat" if entities <= self.flat_max_entities else "ivf"

    def nlist_for(self, entities: int) -> int:
        """About 4 sqrt(N) lists (faiss's guideline), capped so each gets enough training points."""
        if self.nlist:
            if self.nlist > entities:
                refuse(self, f"nlist={self.nlist} exceeds the {entities} usable entities; lower it or set 0.")
            return self.nlist
        return max(1, min(round(4 * math.sqrt(entities)), entities // TRAIN_POINTS_PER_LIST))

    def gpu(self) -> bool:
        available = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
        if self.use_gpu == "always" and not available:
            refuse(self, "use_gpu='always' needs faiss with GPU support (faiss-gpu) and a visible GPU; "
                   "neither is present here.")
        return available and self.use_gpu != "never"

