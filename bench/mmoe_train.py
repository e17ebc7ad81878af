"""Training cost and learning-rate sweep of the MMoE matcher on a materialized lake (the demo by default).

    python bench/mmoe_train.py --lake .mel                          # 3 epochs on the CPU, default settings
    python bench/mmoe_train.py --lake .mel --lr 3e-4 1e-3 3e-3 --epochs 20   # the sweep behind HEAD_LR
    python bench/mmoe_train.py --lake .mel --device cuda --epochs 5          # GPU: samples/s with AMP

The lake must hold the feature stores and `mention_candidates` (`make demo`, or `bench/ablations.py`, which
materializes them). Each setting trains in its own child process, through the pipeline's `train_model`, into
its own run folder (so the lake's model is left alone), with early stopping off unless `--patience` is given.
Reported per setting: seconds per epoch (training only, and with the dev evaluation), train mentions per
second, peak RSS (VmHWM, memory-mapped store pages included), the device, and dev MRR per epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def train_once(args) -> dict:
    import torch

    from pipeline.lake import Lake
    from pipeline.training.data import Inputs
    from pipeline.training.settings import TrainingSettings
    from pipeline.training.train import train_model

    if args.threads:
        torch.set_num_threads(args.threads)
    inputs = Inputs.open(Lake(args.lake, description_source=args.description_source))
    settings = TrainingSettings(lr=args.child_lr, epochs=args.epochs, patience=args.patience, device=args.device,
                                progress=False, batch_size=args.batch_size, hard_negatives=args.hard_negatives)
    started = time.perf_counter()
    report = train_model(inputs, settings, Path(args.runs))
    seconds = time.perf_counter() - started
    device = torch.device(settings.torch_device())
    return {
        "lr": settings.learning_rate, "epochs": len(report.history), "wall_seconds": seconds,
        "train_seconds_per_epoch": sum(e["seconds"] for e in report.history) / len(report.history),
        "samples_per_second": report.samples_per_second, "dev_mrr": [round(e["dev_mrr"], 4) for e in report.history],
        "best_epoch": report.best_epoch, "best_dev": report.best_dev, "peak_rss_mb": status_mb("VmHWM"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "train_mentions": report.train_mentions, "parameters": report.parameters,
        "amp": bool(settings.amp and device.type == "cuda"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", default=os.environ.get("MEL_HOME", ".mel"))
    parser.add_argument("--lr", type=float, nargs="+", default=[0.0], help="0 = the default (HEAD_LR)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--patience", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hard-negatives", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--description-source", default="auto", help="which mention store (ClipResource setting)")
    parser.add_argument("--child-lr", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--runs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_lr is not None:
        print(json.dumps(train_once(args)))
        return

    rows = []
    with tempfile.TemporaryDirectory() as runs:
        for lr in args.lr:
            command = [sys.executable, __file__, "--child-lr", str(lr), "--runs", runs, "--lake", args.lake,
                       "--epochs", str(args.epochs), "--patience", str(args.patience), "--device", args.device,
                       "--threads", str(args.threads), "--batch-size", str(args.batch_size),
                       "--hard-negatives", str(args.hard_negatives), "--description-source", args.description_source]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
    first = rows[0]
    print(f"# {first['train_mentions']} train mentions, {first['parameters']:,} parameters, device {first['device']} "
          f"({first['threads']} threads{', AMP' if first['amp'] else ''}), batch {args.batch_size}, "
          f"{args.hard_negatives} hard negatives, load average {os.getloadavg()[0]:.1f}")
    print("| lr | epochs | s/epoch (train) | s/epoch (with dev eval) | mentions/s | peak RSS MB | best epoch | "
          "best dev MRR | dev MRR per epoch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['lr']:g} | {r['epochs']} | {r['train_seconds_per_epoch']:.1f} | {r['wall_seconds'] / r['epochs']:.1f} "
              f"| {r['samples_per_second']:.1f} | {r['peak_rss_mb']:.0f} | {r['best_epoch']} | "
              f"{r['best_dev']['mrr']:.4f} | {' '.join(str(m) for m in r['dev_mrr'])} |")


if __name__ == "__main__":
    main()
