"""Training and evaluation of the MMoE matcher on the cached CLIP features (assets `mmoe_model`,
`retrieval_index`, `retrieval_candidates`, `evaluation`).

The stages: `train.train_mmoe`, `retrieval.build_retrieval_index`, `retrieval.find_retrieval_candidates`,
`evaluate.evaluate_mmoe`, each `(lake, settings, *, logger) -> report`.

- ``settings``     TrainingSettings: the recipe (paper defaults, head-only learning rate), the matcher config
- ``data``         the stores and tables of a lake, consistency checks, feature rows for the matcher
- ``batches``      training batches with FAISS hard negatives
- ``checkpoints``  run folders: safetensors + JSON per epoch, atomic commits, resume
- ``trainer``      one round: AdamW, AMP on CUDA, early stopping on dev MRR, NaN guard, resume
- ``train``        the stage: rounds whose hard negatives come from the trained index, reuse of a stored run
- ``trained``      the lake's current model, its identity, loading it
- ``retrieval``    the trained index: the matcher's retrieval vectors in FAISS, top-K per mention from it
- ``encodings``    entity encodings computed once per evaluation, packed in float16
- ``scoring``      ranking mentions: rerank the FAISS top-K or score the full KB
- ``predictions``  the `predictions` table: schema, rows, row keys
- ``plan``         which rows an evaluation ranks anew and the entity encodings they need
- ``summaries``    metrics per split, zero-shot baselines, recall, timings, rank histogram
- ``evaluate``     the stage: the predictions table and the report, reused when nothing changed
- ``baselines``    zero-shot CLIP cosine
"""

from pipeline.training.data import Inputs, Mentions
from pipeline.training.encodings import EncodedEntities
from pipeline.training.evaluate import EvaluationReport, evaluate_mmoe, evaluate_model
from pipeline.training.scoring import Ranking, rank_mentions
from pipeline.training.settings import TrainingSettings
from pipeline.training.train import train_mmoe, train_model
from pipeline.training.trained import current_model
from pipeline.training.trainer import NonFiniteLoss, TrainingReport

__all__ = [
    "EncodedEntities", "EvaluationReport", "Inputs", "Mentions", "NonFiniteLoss", "Ranking", "TrainingReport",
    "TrainingSettings", "current_model", "evaluate_mmoe", "evaluate_model", "rank_mentions", "train_mmoe",
    "train_model",
]
