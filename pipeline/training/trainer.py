"""One round of training the MMoE matcher on the cached CLIP features: epochs, early stopping, checkpoints, resume.

Objective: as the paper, cross-entropy of each train mention against its in-batch negatives (the other
mentions' golds), for the total score and for each unit's score (`model.mmoe_loss`), plus hard negatives
from the FAISS candidates (see `batches.py` for sampling and deduplication).

Optimiser: AdamW, weight decay on weight matrices only (not on biases and norm weights), constant learning
rate (see `settings.py` for its default), batch 32, up to 20 epochs; after each epoch the dev mentions'
FAISS top-K are reranked and training stops when dev MRR has not improved for `patience` epochs
(`patience=0` never stops early). The best epoch's weights are the result.

Reproducibility: the data order and hard negatives of epoch e come from (seed, epoch), and torch's generator
is re-seeded from (seed, epoch) at each epoch start, so a run resumed after a crash draws what the
uninterrupted run drew; on the CPU the final weights are bit-identical. On CUDA, autocast (bf16, or fp16 with
loss scaling where bf16 is unsupported) and non-deterministic kernels make runs close, not identical.

Progress: a tqdm line (steps, rate, loss) goes to the log every 30 s, and one line per epoch with the loss
parts and the dev metrics (also in the report, for the Dagster metadata).

NaN guard: every batch's features are checked (a NaN/Inf row stops training naming the store and ids),
and a non-finite loss stops training naming the epoch, the step and the batch's mention ids.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from model import MMoEConfig, MMoEMatcher, load_checkpoint, mmoe_loss, ranking_metrics
from pipeline.errors import MELUserError
from pipeline.progress import LogStream
from pipeline.training.batches import TrainBatch, TrainSet, epoch_batches, train_set
from pipeline.training.checkpoints import RunFolder, epoch_name
from pipeline.training.data import Inputs, Mentions, read_features
from pipeline.training.scoring import rank_mentions
from pipeline.training.settings import TrainingSettings

PROGRESS_SECONDS = 30.0  # a progress line in the log (and the Dagster UI) at most this often


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
                f"{shown}); check those mentions' features or lower the training setting lr "
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
