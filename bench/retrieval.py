"""Trained candidate retrieval on a real lake (the demo's, or any dataset's): the zero-shot CLIP index against
the trained matcher's index, and the matcher reranking each of them against scoring the full KB.

    make demo && python bench/retrieval.py --lake .mel/lake            # the default recipe
    python bench/retrieval.py --lake .mel/lake --weights 1 0 --rounds 2  # with and without the retrieval loss

For each retrieval-loss weight, on its own copy of the lake (the input lake is not touched): train with the
pipeline's `train_mmoe` (rounds as configured), build the trained index (`build_retrieval_index`), search every
mention (`find_retrieval_candidates`), then `evaluate_model` on the test split with three scorings side by side:
rerank@K over the trained index, rerank@K over the zero-shot index, and every KB entity. Figures: recall@n of
both indexes, Hits@1 and MRR of each scoring, the time per mention of each (FAISS search, and ranking with the
entity encodings ready), and each training round.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COPIED = ("tables", "features", "index")  # what training, retrieval and evaluation read


def copy_lake(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in COPIED:
        shutil.copytree(source / name, target / name, ignore=shutil.ignore_patterns("inbox", "trained"))


def run_variant(args, weight: float) -> dict:
    import torch

    from pipeline import catalog
    from pipeline.index import IndexSettings
    from pipeline.lake import Lake
    from pipeline.training.data import Inputs
    from pipeline.training.evaluate import evaluate_model
    from pipeline.training.retrieval import build_retrieval_index, find_retrieval_candidates
    from pipeline.training.settings import TrainingSettings
    from pipeline.training.train import train_mmoe

    lake = Lake(Path(args.work) / f"weight-{weight:g}")
    copy_lake(Path(args.lake), lake.root)
    settings = TrainingSettings(retrieval_loss_weight=weight, retrieval_rounds=args.rounds, progress=False,
                                device=args.device, full_kb=True, rerank_k=args.k)
    device = settings.torch_device()
    started = time.perf_counter()
    model = train_mmoe(lake, settings).as_dict()
    training_seconds = time.perf_counter() - started
    index_settings = IndexSettings(candidates_per_mention=args.k)
    built = build_retrieval_index(lake, index_settings, device=device)
    candidates = find_retrieval_candidates(lake, index_settings, device=device)
    report = evaluate_model(lake, settings, model, Inputs.open(lake), write_predictions=False,
                            trained_candidates=True, out_dir=lake.root / "bench")
    zero_shot = lake.table_extra(catalog.MENTION_CANDIDATES)
    return {"weight": weight, "model": model, "training_seconds": training_seconds,
            "index_seconds": built.index.seconds, "report": report, "search_ms": {
                "trained": 1000 * candidates.stats["search_seconds"] / max(candidates.stats["searched"], 1),
                "zero-shot CLIP": 1000 * zero_shot["search_seconds"] / max(zero_shot["searched"], 1)},
            "threads": torch.get_num_threads()}


def print_variant(result: dict, k: int) -> None:
    report, model = result["report"], result["model"]
    print(f"\n## retrieval_loss_weight = {result['weight']:g}: training {result['training_seconds']:.0f} s "
          f"({len(model['rounds'])} rounds, model from round {model['round']}), trained index built in "
          f"{result['index_seconds']:.1f} s\n")
    print("| round | epochs | best epoch | dev MRR over its trained top-K | dev recall@K | train recall@K | "
          "dev MRR over the round's candidates |")
    print("|---|---|---|---|---|---|---|")
    for r in model["rounds"]:
        print(f"| {r['round']} | {r['epochs']} | {r['best_epoch']} | {r['dev_mrr']:.4f} | {r['dev_recall']:.4f} | "
              f"{r['train_recall']:.4f} | {r['dev_mrr_round_candidates']:.4f} |")
    print("\n| index (test) | recall@1 | recall@10 | recall@50 | recall@100 | FAISS search ms/mention |")
    print("|---|---|---|---|---|---|")
    for row in report.retrieval:
        if row["split"] == "test":
            print(f"| {row['index']} | " + " | ".join(f"{row.get(f'recall@{n}', float('nan')):.4f}"
                                                     for n in (1, 10, 50, 100))
                  + f" | {result['search_ms'][row['index']]:.3f} |")
    timing = {row["scoring"]: row for row in report.timings if row["split"] == "test"}
    print("\n| MMoE scoring (test) | Hits@1 | Hits@10 | MR | MRR | rank ms/mention (encodings ready) |")
    print("|---|---|---|---|---|---|")
    for row in report.metrics:
        if row["split"] == "test":
            print(f"| {row['scoring']} | {row['hits@1']:.4f} | {row['hits@10']:.4f} | {row['mr']:.2f} | "
                  f"{row['mrr']:.4f} | {timing[row['scoring']]['ms_per_mention']:.2f} |")
    test = {row["scoring"]: row for row in report.metrics if row["split"] == "test"}
    gap = test["full_kb"]["mrr"] - test[f"rerank@{k}"]["mrr"]
    print(f"\nfull-KB MRR minus trained rerank@{k} MRR: {gap:+.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", required=True, help="a lake the pipeline wrote (make demo: .mel/lake)")
    parser.add_argument("--work", default="/tmp/retrieval-bench", help="where the lake copies go")
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# Trained retrieval on {args.lake}: {platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, load average {os.getloadavg()[0]:.1f}")
    for weight in args.weights:
        print_variant(run_variant(args, weight), args.k)


if __name__ == "__main__":
    main()
