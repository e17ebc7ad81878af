"""MMoE against its baselines and ablations, side by side on the test split of a materialized lake.

    python bench/ablations.py --lake .mel                    # after `make demo`
    python bench/ablations.py --lake .mel --oracle --epochs 10 --threads 1

Rows (every one on the same test mentions, the same KB and the same rank conventions as the `evaluation`
asset; see pipeline/training/evaluate.py):

  zero-shot CLIP (text / image / both)   cosine of the pooled CLIP vectors, no training
  MMoE                                   the pipeline's recipe on the lake's mention store (ClipResource
                                         description_source, `auto` = the LLM-chosen WikiData description)
  w/o description                        trained and evaluated on mention texts without any description
                                         (a second store, description_source "none", via the pipeline's
                                         extract_features)
  text unit only / vision unit only / w/o inter-level MoE   `units` = (text) / (image) / (text, image)
  reference gate                         the published gate (model/GATES.md)
  + oracle description (`--oracle`)      diagnostic only: the gold entity's own KB description appended to
                                         the mention text; an upper bound on what a perfect description
                                         choice could give, NOT a pipeline result

Each MMoE row is trained with `train_model` (early stopping on dev MRR) into `<lake>/mmoe/ablations/` (reused on
a re-run when nothing changed) and evaluated twice: reranking the FAISS top-100 (`rerank@100`, the
pipeline's default) and scoring the whole KB (`full_kb`, the paper's protocol). Training uses the FAISS
candidates of the lake's main mention store for hard negatives in every row.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import ranking_metrics  # noqa: E402
from pipeline import catalog  # noqa: E402
from pipeline.features import EncoderSpec, Items, extract_features, mention_items  # noqa: E402
from pipeline.features.items import SEPARATOR  # noqa: E402
from pipeline.lake import Lake  # noqa: E402
from pipeline.training.baselines import MODALITIES, zero_shot_ranks  # noqa: E402
from pipeline.training.data import Inputs  # noqa: E402
from pipeline.training.evaluate import evaluate_model  # noqa: E402
from pipeline.training.settings import TrainingSettings  # noqa: E402
from pipeline.training.train import train_model  # noqa: E402

ORACLE_SOURCE = "oracle"  # its mention store is features/mention_features_desc-oracle (catalog.mention_store_name)
METRICS = ("hits@1", "hits@3", "hits@5", "hits@10", "hits@20", "mr", "mrr")

log = logging.getLogger("ablations")


def variants(oracle: bool) -> list[tuple[str, dict, str]]:
    """(row name, settings changes, mention store)."""
    rows = [
        ("MMoE", {}, "main"),
        ("MMoE w/o description", {}, "none"),
        ("text unit only", {"units": ("text",)}, "main"),
        ("vision unit only", {"units": ("image",)}, "main"),
        ("w/o inter-level MoE", {"units": ("text", "image")}, "main"),
        ("reference gate", {"gate_mode": "reference"}, "main"),
    ]
    return rows + ([("MMoE + oracle description (diagnostic)", {}, "oracle")] if oracle else [])


def clip_spec():
    return EncoderSpec(num_workers=0)  # the encoder the feature assets use by default


def ensure_store(lake: Lake, which: str) -> Lake:
    """The lake as a row reads it: with its main mention store, or the no-description / oracle one (encoded
    once, then reused)."""
    if which == "main":
        return lake
    variant = Lake(lake.root, description_source="none" if which == "none" else ORACLE_SOURCE)
    items = mention_items(lake, "none") if which == "none" else oracle_items(lake)
    extract_features(items, catalog.mention_store_dir(variant), clip_spec(), logger=log)
    return variant


def oracle_items(lake: Lake) -> Items:
    """Mention texts `mention [SEP] sentence [SEP] <the gold entity's KB description>` (nil: no description)."""
    items = mention_items(lake, "none")
    mentions = lake.read_table(catalog.MENTIONS, columns=["mention_id", "gold_index"]).to_pydict()
    entities = lake.read_table(catalog.ENTITIES, columns=["kb_index", "description"]).to_pydict()
    description = dict(zip(entities["kb_index"], entities["description"]))
    gold = dict(zip(mentions["mention_id"], mentions["gold_index"]))
    texts = [text + SEPARATOR + description[gold[i]] if gold[i] is not None and description.get(gold[i]) else text
             for i, text in zip(items.ids, items.texts)]
    recipe = {**items.recipe, "description_source": "oracle (gold entity's KB description; diagnostic only)"}
    return Items(items.kind, items.ids, texts, items.image_files, items.image_digests, recipe)


def metric_row(name: str, protocol: str, metrics: dict, extra: str = "") -> dict:
    return {"name": name, "protocol": protocol, **{k: metrics[k] for k in METRICS}, "count": metrics["count"],
            "extra": extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", default=os.environ.get("MEL_HOME", ".mel"))
    parser.add_argument("--description-source", default="auto", help="ClipResource setting of the main store")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.0, help="0 = the default (HEAD_LR)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--oracle", action="store_true", help="add the oracle-description diagnostic row")
    parser.add_argument("--only", nargs="*", help="row names to run (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)

    lake = Lake(args.lake, description_source=args.description_source)
    main_inputs = Inputs.open(lake)
    recipe = main_inputs.mentions_store.recipe
    rows, rerank_k = [], 100
    test = main_inputs.mentions.select("test")
    for modality in MODALITIES:
        ranks = zero_shot_ranks(main_inputs.entities, main_inputs.mentions_store, main_inputs.mentions, test, modality)
        rows.append(metric_row(f"zero-shot CLIP ({modality})", "full KB, capped at 101",
                               ranking_metrics(np.minimum(ranks, rerank_k + 1))))
    ablations = catalog.mmoe_dir(lake) / "ablations"
    base = TrainingSettings(epochs=args.epochs, lr=args.lr, device=args.device, progress=False, full_kb=True,
                            rerank_k=rerank_k)
    for name, changes, store in variants(args.oracle):
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        row_lake = ensure_store(lake, store)
        inputs = Inputs.open(row_lake)
        settings = base.replace(**changes)
        log.info(f"== {name}: {changes or 'default settings'}, mention store {inputs.mentions_store.root.name}")
        report = train_model(inputs, settings, ablations, logger=log)
        evaluation = evaluate_model(row_lake, settings, report.as_dict(), inputs, logger=log, write_predictions=False,
                                    out_dir=ablations / "evaluation")
        extra = (f"best epoch {report.best_epoch}/{len(report.history)}, "
                 f"{time.perf_counter() - started:.0f} s{' (reused)' if report.reused else ''}")
        for row in evaluation.metrics:
            if row["split"] == "test":
                rows.append(metric_row(name, row["scoring"], row, extra))
    print(f"\n# {args.lake}: test split, {rows[0]['count']} linkable mentions; main mention store "
          f"{recipe.get('resolved_description_source', recipe.get('description_source'))} descriptions "
          f"({recipe.get('mentions_with_description', '?')} mentions with one); encoder "
          f"{main_inputs.entities.encoder.get('arch')} ({main_inputs.entities.encoder.get('weights')})\n")
    print("| method | protocol | Hits@1 | Hits@3 | Hits@5 | Hits@10 | Hits@20 | MR | MRR | notes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['name']} | {row['protocol']} | " + " | ".join(
            f"{row[k]:.2f}" if k == "mr" else f"{row[k]:.4f}" for k in METRICS) + f" | {row['extra']} |")


if __name__ == "__main__":
    main()
