"""Train the MMoE matcher (asset `mmoe_model`): rounds of training, each with hard negatives from the best
model so far, in a stored run that is reused or resumed.

One round is `trainer.Trainer` (the objective, optimiser, early stopping, reproducibility and NaN guard are
described there). `train_mmoe` is the stage: it trains on the lake's inputs (`Inputs.open`) into
`catalog.training_runs_dir` and records the result as the lake's current model (`trained.current_model`);
`train_model` trains on any inputs into any runs folder (benchmarks, tests).

Rounds (`train_rounds`): round 1 trains on the zero-shot index's candidates; each later round continues from
the previous round's best weights with hard negatives and dev candidates mined from that model's own trained
index (`retrieval.mine_candidates`), and training keeps the round with the best dev MRR over its own trained
top-K. The loss then also weighs the cross-entropy of the score's separable part (`retrieval_loss_weight`),
which is what the trained index ranks by.

Stored runs: a run folder is named by the digest of (code version, the settings that decide the weights,
what training reads: the train and dev mentions, their features and candidates, and the entities those
name; see `Inputs.training_fingerprints`). New test mentions or a changed KB entity that no train/dev
mention reads leave the digest as it was. An unchanged digest with a finished run is reused; with an
unfinished one, training resumes after its last finished epoch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np

from model import MMoEConfig, MMoEMatcher, load_checkpoint, ranking_metrics
from pipeline import catalog
from pipeline.atomic import write_text_atomic
from pipeline.hashing import hash_strings
from pipeline.lake import Lake
from pipeline.training.checkpoints import RunFolder
from pipeline.training.data import TRAINING_SPLITS, Inputs, Mentions
from pipeline.training.retrieval import mine_candidates
from pipeline.training.scoring import rank_mentions
from pipeline.training.settings import TrainingSettings
from pipeline.training.trained import record_current_model
from pipeline.training.trainer import Trainer, TrainingReport

TRAINING_VERSION = "2"  # bump when a change of this code changes the trained weights
ROUNDS_FILE = "rounds.json"

log = logging.getLogger(__name__)


def run_fingerprint(settings: TrainingSettings, inputs: Inputs, config: MMoEConfig) -> str:
    return hash_strings([TRAINING_VERSION, json.dumps(settings.recipe(), sort_keys=True),
                         json.dumps(inputs.training_fingerprints(), sort_keys=True),
                         json.dumps(config.to_dict(), sort_keys=True, default=list)])


def train_mmoe(lake: Lake, settings: TrainingSettings, *, logger=log) -> TrainingReport:
    """The `mmoe_model` stage: train (or reuse, or resume) the matcher on the lake's inputs and make it the
    lake's current model (`catalog.current_model_path`), which evaluation, the trained index and linking use."""
    report = train_model(Inputs.open(lake), settings, catalog.training_runs_dir(lake), logger=logger)
    record_current_model(lake, report.as_dict())
    return report


def train_model(inputs: Inputs, settings: TrainingSettings, runs_dir: Path, *, logger=log,
                after_epoch: Callable[[int], None] | None = None) -> TrainingReport:
    """Train (or reuse, or resume) the matcher for these settings and inputs, in `runs_dir/<digest>`.

    `after_epoch(epoch)` runs once an epoch's checkpoint is committed (a test hook: raising there
    simulates a crash).
    """
    config = settings.model_config(inputs.dims)
    fingerprint = run_fingerprint(settings, inputs, config)
    run_root = Path(runs_dir) / fingerprint[:20]
    finished = _read_rounds(run_root)
    if finished is not None:
        logger.info(f"Training inputs and settings unchanged (run {fingerprint[:12]}): reusing {run_root}.")
        return TrainingReport(**{**finished, "reused": True})
    return train_rounds(settings, inputs, config, run_root, fingerprint, logger, after_epoch)


def _read_rounds(run_root: Path) -> dict | None:
    """The final report of a finished run (every round done), or None."""
    path = run_root / ROUNDS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def train_rounds(settings: TrainingSettings, inputs: Inputs, config: MMoEConfig, run_root: Path, fingerprint: str,
                 logger, after_epoch=None) -> TrainingReport:
    """Round 1 trains on the zero-shot index's candidates (hard negatives, dev reranking). Each later round
    continues from the previous round's best weights with candidates mined from that model's own trained
    index (BLINK and ANCE refresh their negatives the same way). A round is scored by its dev MRR when
    reranking its own trained top-K, which is what evaluation and linking do; the rounds stop at
    `settings.retrieval_rounds` or when that score stops improving, and the best round's model is the result.
    Each round is a resumable run folder (round 1 at the run's root, round r in `round-r/`)."""
    device = settings.torch_device()
    candidates, initial = inputs.mentions, None
    best: TrainingReport | None = None  # the best round's report so far
    rounds: list[dict] = []
    for number in range(1, settings.retrieval_rounds + 1):
        folder = RunFolder(run_root if number == 1 else run_root / f"round-{number}")
        state = folder.read_state()
        if state and state.get("finished"):
            report = TrainingReport(**state["report"])
        else:
            trainer = Trainer(settings, inputs, config, folder, fingerprint, logger, candidates, initial, number)
            report = trainer.run(state, after_epoch)
        matcher = load_checkpoint(report.checkpoint, config, device=device).model.eval()
        mined, summary = score_round(matcher, inputs, settings, device, logger)
        summary = {"round": number, "epochs": len(report.history), "best_epoch": report.best_epoch,
                   "dev_mrr_round_candidates": report.best_dev["mrr"], **summary}
        rounds.append(summary)
        logger.info(f"Round {number}: dev MRR {summary['dev_mrr']:.4f} reranking its own trained top-"
                    f"{summary['k']} (recall@{summary['k']} dev {summary['dev_recall']:.4f}, train "
                    f"{summary['train_recall']:.4f}); {summary['dev_mrr_round_candidates']:.4f} on this round's "
                    "candidates.")
        if best is not None and summary["dev_mrr"] <= rounds[best.round - 1]["dev_mrr"]:
            logger.info(f"Round {number} did not improve the dev MRR over round {best.round}: keeping round "
                        f"{best.round}'s model.")
            break
        best = dataclasses.replace(report, round=number)
        candidates, initial = mined, report.checkpoint
    final = dataclasses.replace(best, rounds=rounds)
    write_text_atomic(run_root / ROUNDS_FILE, json.dumps(final.as_dict(), indent=1, sort_keys=True))
    return final


def score_round(matcher: MMoEMatcher, inputs: Inputs, settings: TrainingSettings, device,
                logger) -> tuple[Mentions, dict]:
    """The train/dev mentions' trained top-K under `matcher`, and its dev MRR reranking them."""
    mentions = inputs.mentions
    positions = np.flatnonzero(np.isin(mentions.split, TRAINING_SPLITS))
    k = settings.rerank_k
    started = time.perf_counter()
    mined = mine_candidates(matcher, mentions, inputs.mentions_store, inputs.entities, positions,
                            max(k, settings.hard_negative_pool + 1), device)
    mining_seconds = time.perf_counter() - started
    ranking = rank_mentions(matcher, mined, inputs.mentions_store, inputs.entities, mentions.select("dev"), device, k,
                            batch_size=settings.eval_batch_size)
    metrics = ranking_metrics(ranking.gold_rank)
    recall = {split: mined.recall(mentions.select(split), [k])[k] for split in TRAINING_SPLITS}
    return mined, {"dev_mrr": metrics["mrr"], "dev_hits@1": metrics["hits@1"], "k": k,
                   "dev_recall": recall["dev"], "train_recall": recall["train"],
                   "mining_seconds": round(mining_seconds, 3)}
