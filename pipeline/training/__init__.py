"""Training and evaluation of the MMoE matcher on the cached CLIP features (assets `mmoe_model`, `evaluation`).

- ``settings``     TrainingSettings: the recipe (paper defaults, head-only learning rate), the matcher config
- ``data``         the stores and tables of a lake, consistency checks, batches with FAISS hard negatives
- ``checkpoints``  run folders: safetensors + JSON per epoch, atomic commits, resume
- ``train``        the loop: AdamW, AMP on CUDA, early stopping on dev MRR, NaN guard, reuse and resume;
                   training rounds whose hard negatives come from the trained index
- ``retrieval``    the trained index: the matcher's retrieval vectors in FAISS, top-K per mention from it
- ``scoring``      ranking mentions: rerank the FAISS top-K or score the full KB, from entity encodings
                   computed once
- ``evaluate``     metrics per split, the `predictions` table, zero-shot baselines, rank histogram
- ``baselines``    zero-shot CLIP cosine, the ablation list
- ``synthetic``    a synthetic lake written by the real writers, for tests and benchmarks
"""

from pipeline.training.data import Inputs, Mentions
from pipeline.training.evaluate import EvaluationReport, evaluate_model
from pipeline.training.scoring import EncodedEntities, Ranking, rank_mentions
from pipeline.training.settings import TrainingSettings
from pipeline.training.train import NonFiniteLoss, TrainingReport, current_model, train_mmoe

__all__ = [
    "EncodedEntities", "EvaluationReport", "Inputs", "Mentions", "NonFiniteLoss", "Ranking", "TrainingReport",
    "TrainingSettings", "current_model", "evaluate_model", "rank_mentions", "train_mmoe",
]
