"""What an evaluation reports besides its rows: metrics per (split, scoring), the zero-shot baselines, the
recall of each reranked index, the ranking time, and the rank histogram.

Conventions (see `evaluate.py`): metrics are over every non-nil mention; a miss ranks K + 1 (E + 1 for the
full KB); the zero-shot baselines rank the full KB and are capped at K + 1 the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model import ranking_metrics
from pipeline.plots import new_figure, png_bytes, write_png
from pipeline.training.baselines import MODALITIES, zero_shot_ranks
from pipeline.training.data import Inputs, Mentions
from pipeline.training.plan import Block
from pipeline.training.predictions import FULL_KB, ZERO_SHOT

RECALL_AT = (1, 10, 50, 100)
HISTOGRAM_FILE = "rank_histogram.png"


def metrics_row(block: Block, inputs: Inputs) -> dict:
    split, scoring, rows, miss_rank = block.split, block.scoring, block.rows(), block.miss_rank(inputs)
    linkable = [row for row in rows if not row["is_nil"]]
    ranks = np.asarray([row["gold_rank"] for row in linkable], dtype=np.int64)
    unscored = sum(1 for row in linkable if row["entities_scored"] == 0)
    return {"split": split, "scoring": scoring, **ranking_metrics(ranks),
            "outside_top_k": int((ranks == miss_rank).sum()) - unscored, "unscored": unscored,
            "miss_rank": miss_rank}


def timing_row(block: Block) -> dict:
    """What ranking this block's new rows cost, entity encodings ready (none ranked: nothing measured)."""
    ranked = len(block.to_rank)
    return {"split": block.split, "scoring": block.scoring, "ranked": ranked, "seconds": round(block.seconds, 3),
            "ms_per_mention": round(1000 * block.seconds / ranked, 3) if ranked else None}


def retrieval_rows(sources: dict[str, Mentions], split_positions: dict[str, np.ndarray], k: int,
                   trained: bool) -> list[dict]:
    """Recall@n (n in 1, 10, 50, 100 up to K, and K) of the gold among each reranked candidate list, per split,
    over every non-nil mention (`trained`: `rerank@K` reranks the trained index's candidates)."""
    cutoffs = sorted({n for n in RECALL_AT if n <= k} | {k})
    rows = []
    for scoring, mentions in sources.items():
        if scoring == FULL_KB:
            continue
        index = "trained" if trained and not scoring.startswith(ZERO_SHOT) else "zero-shot CLIP"
        for split, positions in split_positions.items():
            linkable = positions[~mentions.is_nil[positions]]
            rows.append({"index": index, "scoring": scoring, "split": split, "mentions": len(linkable),
                         **{f"recall@{n}": value for n, value in mentions.recall(linkable, cutoffs).items()}})
    return rows


def baseline_rows(inputs: Inputs, split_positions: dict[str, np.ndarray], rerank_k: int) -> list[dict]:
    rows = []
    for split, positions in split_positions.items():
        linkable = positions[~inputs.mentions.is_nil[positions]]
        for modality in MODALITIES:
            ranks = zero_shot_ranks(inputs.entities, inputs.mentions_store, inputs.mentions, linkable, modality)
            rows.append({"split": split, "modality": modality, **ranking_metrics(np.minimum(ranks, rerank_k + 1)),
                         "scoring": f"full KB, ranks capped at {rerank_k + 1}"})
    return rows


def log_rows(rows: list[dict], logger) -> None:
    for row in rows:
        method = f"zero-shot CLIP ({row['modality']})" if "modality" in row else f"MMoE {row['scoring']}"
        logger.info(f"{row['split']} {method}: MRR {row['mrr']:.4f}, "
                    f"hits@1 {row['hits@1']:.4f}, hits@10 {row['hits@10']:.4f}, MR {row['mr']:.2f} "
                    f"({row['count']} mentions)")


# -- the rank histogram ---------------------------------------------------------------------------------


def write_test_histogram(out_dir: Path, blocks: list[Block], inputs: Inputs, test: np.ndarray, k: int) -> Path:
    """The histogram of the test split's gold ranks: `rerank@K` next to zero-shot CLIP (text+image)."""
    mentions = inputs.mentions
    test_rerank = next(b for b in blocks if b.split == "test" and b.scoring.startswith("rerank@"))
    linkable_test = test[~mentions.is_nil[test]]
    zero_shot = np.minimum(zero_shot_ranks(inputs.entities, inputs.mentions_store, mentions, linkable_test, "both"),
                           k + 1)
    mmoe_ranks = [row["gold_rank"] for row in test_rerank.rows() if not row["is_nil"]]
    return write_histogram(out_dir / HISTOGRAM_FILE, np.asarray(mmoe_ranks), zero_shot, k)


def rank_bins(k: int) -> list[tuple[str, int, int]]:
    edges = [(1, 1), (2, 2), (3, 3), (4, 5), (6, 10), (11, 20), (21, 50), (51, k)]
    bins = [(str(low) if low == high else f"{low}-{high}", low, high) for low, high in edges if low <= k]
    return [(label, low, min(high, k)) for label, low, high in bins] + [(f"> {k} (miss)", k + 1, k + 1)]


def write_histogram(path: Path, mmoe_ranks: np.ndarray, zero_shot_ranks_: np.ndarray, k: int) -> Path:
    """Bar chart of gold-rank bins (share of mentions): MMoE reranking next to zero-shot CLIP."""
    bins = rank_bins(k)
    labels = [label for label, _, _ in bins]
    x = np.arange(len(bins))

    def shares(ranks):
        ranks = np.asarray(ranks)
        return [float(((ranks >= low) & (ranks <= high)).mean()) if len(ranks) else 0.0 for _, low, high in bins]

    figure, axes = new_figure()
    axes.bar(x - 0.2, shares(mmoe_ranks), width=0.4, label="MMoE rerank")
    axes.bar(x + 0.2, shares(zero_shot_ranks_), width=0.4, label="zero-shot CLIP (text+image)")
    axes.set_xticks(x, labels, rotation=30)
    axes.set_xlabel("rank of the gold entity (test split)")
    axes.set_ylabel("share of mentions")
    axes.legend(frameon=False)
    return write_png(path, png_bytes(figure))
