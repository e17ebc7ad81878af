"""Train the MMoE matcher on the cached CLIP features, with early stopping, checkpoints and resume.

Objective: as the paper, cross-entropy of each train mention against its in-batch negatives (the other
mentions' golds), for the total score and for each unit's score (`model.mmoe_loss`), plus hard negatives
from the FAISS candidates (see `data.py` for sampling and deduplication).

Optimiser: AdamW, weight decay on weight matrices only (not on biases and norm weights), constant learning
rate (see `settings.py` for its default), batch 32, up to 20 epochs; after each epoch the dev mentions'
FAISS top-K are reranked and training stops when dev MRR has not improved for `patience` epochs
(`patience=0` never stops early). The best epoch's weights are the result.

Rounds (`train_rounds`): round 1 trains on the zero-shot index's candidates; each later round continues from
the previous round's best weights with hard negatives and dev candidates mined from that model's own trained
index (`retrieval.mine_candidates`), and training keeps the round with the best dev MRR over its own trained
top-K. The loss then also weighs the cross-entropy of the score's separable part (`retrieval_loss_weight`),
which is what the trained index ranks by.

Reproducibility: the data order and hard negatives of epoch e come from (seed, epoch), and torch's generator
is re-seeded from (seed, epoch) at each epoch start, so a run resumed after a crash draws what the
uninterrupted run drew; on the CPU the final weights are bit-identical. On CUDA, autocast (bf16, or fp16 with
loss scaling where bf16 is unsupported) and non-deterministic kernels make runs close, not identical.

Progress: a tqdm line (steps, rate, loss) goes to the log every 30 s, and one line per epoch with the loss
parts and the dev metrics (also in the report, for the Dagster metadata).

Stored runs: a run folder is named by the digest of (code version, the settings that decide the weights,
what training reads: the train and dev mentions, their features and candidates, and the entities those
name; see `Inputs.training_fingerprints`). New test mentions or a changed KB entity that no train/dev
mention reads leave the digest as it was. An unchanged digest with a finished run is reused; with an
unfinished one, training resumes after its last finished epoch.

NaN guard: every batch's features are checked (a NaN/Inf row stops training naming the store and ids),
and a non-finite loss stops training naming the epoch, the step and the batch's mention ids.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from model import MMoEConfig, MMoEMatcher, load_checkpoint, mmoe_loss, ranking_metrics
from pipeline.errors import MELUserError
from pipeline.hashing import hash_strings
from pipeline.lake import Lake, write_text_atomic
from pipeline.progress import LogStream
from pipeline.training.checkpoints import RunFolder, epoch_name
from pipeline.training.data import (TRAINING_SPLITS, Inputs, Mentions, TrainBatch, TrainSet, epoch_batches,
                                    read_features, train_set)
from pipeline.training.retrieval import mine_candidates
from pipeline.training.scoring import rank_mentions
from pipeline.training.settings import TrainingSettings

TRAINING_VERSION = "2"  # bump when a change of this code changes the trained weights
CURRENT_MODEL = "current.json"
PROGRESS_SECONDS = 30.0  # a progress line in the log (and the Dagster UI) at most this often

log = logging.getLogger(__name__)


class NonFiniteLoss(MELUserError):
    """The training loss became NaN or Inf."""


@dataclass
class TrainingReport:
    fingerprint: str
    run_dir: str
    checkpoint: str  # the best epoch's folder (model.safetensors + config.json)
    config: dict
    history: list[dict]  # per epoch: loss parts, dev metrics, seconds, samples/s
    best_epoch: int
    best_dev: dict
    parameters: int
    samples_per_second: float  # train mentions per second of training (dev evaluation excluded)
    device: str
    train_mentions: int
    left_out: dict  # train mentions not trained on, by reason
    stopped_early: bool
    resumed_from_epoch: int = 0  # 0: started from scratch
    reused: bool = False
    inputs: dict = field(default_factory=dict)  # digests of what was trained on (Inputs.training_fingerprints)
    encoder: dict = field(default_factory=dict)  # identity of the CLIP encoder that wrote the features
    round: int = 1  # the retrieval round this model comes from (see `train_rounds`)
    rounds: list[dict] = field(default_factory=list)  # per round: epochs, dev MRR over its own trained top-K...

    def as_dict(self) -> dict:
        return asdict(self)


def models_dir(lake: Lake) -> Path:
    return lake.root / "mmoe"


def run_fingerprint(settings: TrainingSettings, inputs: Inputs, config: MMoEConfig) -> str:
    return hash_strings([TRAINING_VERSION, json.dumps(settings.recipe(), sort_keys=True),
                         json.dumps(inputs.training_fingerprints(), sort_keys=True),
                         json.dumps(config.to_dict(), sort_keys=True, default=list)])


def train_mmoe(lake: Lake, settings: TrainingSettings, inputs: Inputs | None = None, runs_dir: Path | None = None,
               logger=log, after_epoch: Callable[[int], None] | None = None) -> TrainingReport:
    """Train (or reuse, or resume) the matcher for these settings and the lake's inputs.

    `after_epoch(epoch)` runs once an epoch's checkpoint is committed (a test hook: raising there
    simulates a crash). The best checkpoint is recorded in `<models_dir>/current.json` for evaluation.
    """
    settings.validate()
    inputs = inputs or Inputs.open(lake)
    config = settings.model_config(inputs.dims)
    fingerprint = run_fingerprint(settings, inputs, config)
    run_root = (runs_dir or models_dir(lake) / "runs") / fingerprint[:20]
    finished = _read_rounds(run_root)
    if finished is not None:
        logger.info(f"Training inputs and settings unchanged (run {fingerprint[:12]}): reusing {run_root}.")
        report = TrainingReport(**{**finished, "reused": True})
    else:
        report = train_rounds(settings, inputs, config, run_root, fingerprint, logger, after_epoch)
    if runs_dir is None:
        write_text_atomic(models_dir(lake) / CURRENT_MODEL, json.dumps(report.as_dict(), indent=1, sort_keys=True))
    return report


ROUNDS_FILE = "rounds.json"


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


def current_model(lake: Lake) -> dict:
    """The report of the last model trained for this lake (what `evaluation` scores with)."""
    path = models_dir(lake) / CURRENT_MODEL
    if not path.is_file():
        raise MELUserError(f"No trained MMoE model in the lake (no {path}); materialize mmoe_model first.")
    return json.loads(path.read_text(encoding="utf-8"))


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only: biases and LayerNorm weights (1-D) are not decayed."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class Trainer:
    def __init__(self, settings: TrainingSettings, inputs: Inputs, config: MMoEConfig, run: RunFolder,
                 fingerprint: str, logger, candidates: Mentions | None = None, initial: str | None = None,
                 round_number: int = 1):
        """`candidates`: the mentions with the candidate lists to draw hard negatives from and rerank dev over
        (default: the zero-shot index's); `initial`: a checkpoint to start from (a later round)."""
        self.settings, self.inputs, self.config, self.folder = settings, inputs, config, run
        self.fingerprint, self.logger = fingerprint, logger
        self.device = settings.torch_device()
        self.mentions = candidates if candidates is not None else inputs.mentions
        self.round = round_number
        # Each round draws its own data order and negatives; round 1 keeps the seed as it is.
        self.seed = settings.seed if round_number == 1 else epoch_seed(settings.seed, 1_000_000 + round_number)
        self.data: TrainSet = train_set(self.mentions, settings.hard_negative_pool)
        self.dev_positions = self.mentions.select("dev")
        if len(self.dev_positions) == 0:
            raise MELUserError("The dev split has no linkable (non-nil) mention: early stopping and model selection "
                               "need dev mentions; add some to the dataset's dev file.")
        seed_everything(self.seed)
        self.model = MMoEMatcher(config).to(self.device)
        if initial is not None:
            self.model.load_state_dict(load_checkpoint(initial, config, device=self.device).model.state_dict())
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, settings.weight_decay),
                                           lr=settings.learning_rate)
        self.autocast_dtype = self._autocast_dtype()
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype == torch.float16 else None
        self.reference = config.gate_mode == "reference"

    def _autocast_dtype(self) -> torch.dtype | None:
        if not (self.settings.amp and self.device.type == "cuda"):
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.autocast_dtype)

    # -- the loop ---------------------------------------------------------------------------------------

    def run(self, stored: dict | None, after_epoch) -> TrainingReport:
        settings = self.settings
        progress = self._resume(stored) or {"epoch": 0, "history": [], "best_epoch": 0, "best_mrr": -1.0,
                                            "epochs_without_improvement": 0, "train_seconds": 0.0,
                                            "resumed_from": 0}
        self._log_start()
        for epoch in range(progress["epoch"] + 1, settings.epochs + 1):
            if settings.patience and progress["epochs_without_improvement"] >= settings.patience:
                break
            record = self._train_epoch(epoch)
            record.update(self._dev_metrics())
            improved = record["dev_mrr"] > progress["best_mrr"]
            progress.update(epoch=epoch, history=progress["history"] + [record],
                            train_seconds=progress["train_seconds"] + record["seconds"])
            if improved:
                progress.update(best_epoch=epoch, best_mrr=record["dev_mrr"], epochs_without_improvement=0)
            else:
                progress["epochs_without_improvement"] += 1
            self.folder.save_epoch(epoch, self.model, self.optimizer, self._scaler_state(), self._on_disk(progress))
            self._log_epoch(record, improved)
            if after_epoch is not None:
                after_epoch(epoch)
        return self._finish(progress, stopped_early=progress["epoch"] < settings.epochs)

    def _on_disk(self, progress: dict, finished: bool = False) -> dict:
        return {**progress, "best": epoch_name(progress["best_epoch"]), "last": epoch_name(progress["epoch"]),
                "fingerprint": self.fingerprint, "finished": finished}

    def _resume(self, stored: dict | None) -> dict | None:
        if not stored or not stored.get("last"):
            return None
        scaler_state = self.folder.restore(stored["last"], self.model, self.optimizer)
        if self.scaler is not None and scaler_state:
            self.scaler.load_state_dict(scaler_state)
        self.logger.info(f"Resuming training run {self.fingerprint[:12]} after epoch {stored['epoch']} "
                         f"(best so far: epoch {stored['best_epoch']}, dev MRR {stored['best_mrr']:.4f}).")
        keys = ("epoch", "history", "best_epoch", "best_mrr", "epochs_without_improvement", "train_seconds")
        return {**{key: stored[key] for key in keys}, "resumed_from": stored["epoch"]}

    def _train_epoch(self, epoch: int) -> dict:
        settings = self.settings
        started = time.perf_counter()
        torch.manual_seed(epoch_seed(self.seed, epoch))
        batches = epoch_batches(self.data, settings.batch_size, settings.hard_negatives, self.seed, epoch)
        self.model.train()
        sums: dict[str, float] = {}
        progress = tqdm(batches, desc=f"epoch {epoch}/{settings.epochs}", unit="batch", file=LogStream(self.logger),
                        mininterval=PROGRESS_SECONDS, ascii=True, ncols=100, disable=not settings.progress)
        for step, batch in enumerate(progress, start=1):
            parts = self._step(epoch, step, batch)
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + value * len(batch.mention_rows)
            progress.set_postfix(loss=f"{parts['loss']:.3f}")
        seconds = time.perf_counter() - started
        record = {"epoch": epoch, **{name: total / len(self.data) for name, total in sums.items()},
                  "seconds": round(seconds, 3), "samples_per_second": round(len(self.data) / seconds, 2)}
        return record

    def _step(self, epoch: int, step: int, batch: TrainBatch) -> dict[str, float]:
        mention_ids = self.mentions.ids[batch.positions]
        mentions = read_features(self.inputs.mentions_store, batch.mention_rows, mention_ids, self.device,
                                 self.reference)
        entity_ids = self.inputs.entities.ids[batch.entity_rows]
        entities = read_features(self.inputs.entities, batch.entity_rows, entity_ids, self.device, self.reference)
        targets = torch.as_tensor(batch.targets, device=self.device)
        with self._autocast():
            scores = self.model.score_all_pairs(mentions, entities)
        loss, parts = mmoe_loss(scores, targets, self.settings.retrieval_loss_weight)
        if not torch.isfinite(loss):
            shown = mention_ids[:32].tolist()
            raise NonFiniteLoss(
                f"Training stopped: the loss became {loss.item()} at epoch {epoch}, step {step} (batch mention ids "
                f"{shown}); check those mentions' features or lower TrainingResource.lr "
                f"(now {self.settings.learning_rate:g}).")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return {"loss": float(loss.detach()), **{f"loss_{name}": float(value) for name, value in parts.items()}}

    def _dev_metrics(self) -> dict:
        ranking = rank_mentions(self.model, self.mentions, self.inputs.mentions_store, self.inputs.entities,
                                self.dev_positions, self.device, self.settings.rerank_k,
                                batch_size=self.settings.eval_batch_size)
        metrics = ranking_metrics(ranking.gold_rank)
        return {f"dev_{name}": value for name, value in metrics.items()}

    def _scaler_state(self) -> dict | None:
        return None if self.scaler is None else self.scaler.state_dict()

    # -- reporting --------------------------------------------------------------------------------------

    def _log_start(self) -> None:
        s = self.settings
        left_out = ", ".join(f"{count} {reason}" for reason, count in self.data.left_out.items() if count)
        source = ("the zero-shot index's candidates" if self.round == 1
                  else f"candidates mined from round {self.round - 1}'s trained index")
        self.logger.info(
            f"Round {self.round} of training MMoE on {source} ({self.config.gate_mode} gate, "
            f"top-{self.config.top_k} of {self.config.num_experts} "
            f"experts, units {'+'.join(self.config.units)}, {parameter_count(self.model):,} parameters) on "
            f"{self.device}{' with ' + str(self.autocast_dtype).replace('torch.', '') + ' autocast' if self.autocast_dtype else ''}: "
            f"{len(self.data)} train mentions ({left_out or 'none'} left out), {len(self.dev_positions)} dev; "
            f"lr {s.learning_rate:g}, batch {s.batch_size}, {s.hard_negatives} hard negatives, up to {s.epochs} "
            f"epochs, patience {s.patience}, seed {s.seed}.")

    def _log_epoch(self, record: dict, improved: bool) -> None:
        self.logger.info(
            f"epoch {record['epoch']}/{self.settings.epochs}: loss {record['loss']:.4f} "
            f"(total {record['loss_total']:.3f}, text {record.get('loss_text', float('nan')):.3f}, "
            f"image {record.get('loss_image', float('nan')):.3f}, cross {record.get('loss_cross', float('nan')):.3f}); "
            f"dev MRR {record['dev_mrr']:.4f}, hits@1 {record['dev_hits@1']:.4f}, hits@10 {record['dev_hits@10']:.4f}"
            f"{' (best)' if improved else ''}; {record['seconds']:.1f} s, {record['samples_per_second']:.1f} mentions/s")

    def _finish(self, progress: dict, stopped_early: bool) -> TrainingReport:
        history = progress["history"]
        best = history[progress["best_epoch"] - 1]
        train_seconds = max(progress["train_seconds"], 1e-9)
        report = TrainingReport(
            fingerprint=self.fingerprint, run_dir=str(self.folder.root),
            checkpoint=str(self.folder.epoch_dir(epoch_name(progress["best_epoch"]))),
            config=json.loads(json.dumps(self.config.to_dict(), default=list)), history=history,
            best_epoch=progress["best_epoch"], best_dev={k[4:]: v for k, v in best.items() if k.startswith("dev_")},
            parameters=parameter_count(self.model),
            samples_per_second=round(len(self.data) * len(history) / train_seconds, 2),
            device=str(self.device), train_mentions=len(self.data), left_out=self.data.left_out,
            stopped_early=stopped_early, resumed_from_epoch=progress["resumed_from"], round=self.round,
            inputs=self.inputs.training_fingerprints(),
            encoder=self.inputs.entities.encoder)
        final = self._on_disk(progress, finished=True)
        self.folder.commit_state({**final, "last": final["best"], "report": report.as_dict()})
        why = "early stop" if stopped_early else "last epoch"
        self.logger.info(f"Training finished ({why}): best epoch {report.best_epoch}, dev MRR "
                         f"{report.best_dev['mrr']:.4f}, hits@1 {report.best_dev['hits@1']:.4f}; {report.checkpoint}")
        return report


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
