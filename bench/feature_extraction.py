"""Benchmarks of CLIP feature extraction and of the feature store.

    python bench/feature_extraction.py throughput    # pipeline items/s vs the bare model forward, one run
    python bench/feature_extraction.py incremental   # refresh after 1% of the entities changed vs a full run
    python bench/feature_extraction.py rss           # peak RSS of take() on a synthetic 100k-item store
    python bench/feature_extraction.py throughput --device cuda --arch ViT-B-32 --precision fp16 \
        --items 8192 --batch-size 256 --num-workers 8 # on a GPU machine (random-init weights: no download)

throughput: synthetic items like MEL mentions (a ~45-token text, a 640x480 photo-like JPEG for 85% of them)
  bare      ``ClipEncoder.encode`` on batches tokenized, decoded and preprocessed beforehand (untimed): the
            model alone, on exactly the batches the pipeline forms
  pipeline  ``extract_features`` end to end into a fresh store: reading, checking and decoding the images in
            DataLoader workers, tokenizing, encoding, writing Parquet parts and mirrors, committing
  images/s  the vision tower alone on the preprocessed images (``--arch ViT-B-32`` on a GPU for the issue's figure)
  The two are measured alternately ``--repeats`` times in the same process. Reported per round: items/s
  (wall clock) and CPU milliseconds per item (this process's threads + the DataLoader workers), and the
  median pipeline/bare ratio of each. On a machine shared with other work, wall-clock rounds swing with
  the load; the CPU-time ratio shows the pipeline's own overhead and equals the throughput ratio on an idle
  CPU-bound machine.
incremental: a full extraction of ``--items`` entities, then 1% of them edited (half the text, half the
  image), then a re-run with nothing changed. Model loading is excluded (one load per process) and reported.
rss: writes a synthetic store (random float16 rows, the dims of ``--arch``) with the pipeline's StoreWriter,
  then, in a fresh child process, opens it and takes random rows; VmHWM (peak RSS) after each step is
  compared with the store's size on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import write_json  # noqa: E402

WORDS = ("river city player album film party king church station school league river bridge island war "
         "prize museum company band season county festival mountain novel singer painter district").split()


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {gpu}"


def photo_like_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Smooth colour fields plus grain: JPEGs of realistic size and decoding cost (~640x480, ~60 KB)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((640, 480), Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-20, 21, (480, 640, 3))
        path = folder / f"photo{i}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def synthetic_items(folder: Path, count: int, seed: int = 0):
    from pipeline.features import Items
    from pipeline.hashing import hash_file

    rng = np.random.default_rng(seed)
    photos = photo_like_jpegs(folder / "images", 64, seed)
    digests = {p: hash_file(p) for p in photos}
    texts, files = [], []
    for i in range(count):
        sentence = " ".join(rng.choice(WORDS, 22))
        description = " ".join(rng.choice(WORDS, 9))
        texts.append(f"Mention {i} [SEP] {sentence} [SEP] {description}")
        files.append(photos[i % len(photos)] if rng.random() < 0.85 else None)
    return Items(
        kind="entity", ids=[str(i) for i in range(count)], texts=texts,
        image_files=[str(f) if f else None for f in files], image_digests=[digests[f] if f else None for f in files],
        recipe={"kind": "entity"},
    )


def spec_from(args):
    from pipeline.features import EncoderSpec

    return EncoderSpec(arch=args.arch, seed=0, device=args.device, precision=args.precision,
                       batch_size=args.batch_size, num_workers=args.num_workers)


def loaded_encoder(args):
    """The encoder of ``args`` and the seconds its loading took."""
    from pipeline.features import load_encoder

    started = time.perf_counter()
    encoder = load_encoder(spec_from(args))
    return encoder, time.perf_counter() - started


def prepared_batches(items, encoder, batch_size):
    from pipeline.features.extract import ItemDataset, make_loader

    dataset = ItemDataset(items.texts, items.image_files, items.image_digests, encoder)
    return list(make_loader(dataset, encoder, batch_size, num_workers=0))


def synchronize():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its reaped children (the DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(action) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``action()``."""
    synchronize()
    wall, cpu = time.perf_counter(), cpu_seconds()
    action()
    synchronize()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def run_throughput(args) -> dict:
    import torch

    from pipeline.features import extract_features

    work = Path(tempfile.mkdtemp(prefix="bench-features-"))
    try:
        items = synthetic_items(work, args.items)
        encoder, load_seconds = loaded_encoder(args)
        batches = prepared_batches(items, encoder, args.batch_size)
        images = [b["images"] for b in batches if len(b["images"])]
        image_count = sum(len(b) for b in images)
        encoder.encode(**_encode_args(batches[0]))  # warm-up: kernels, allocator

        def bare():
            for batch in batches:
                encoder.encode(**_encode_args(batch))

        def pipeline(round_):
            report = extract_features(items, work / f"store{round_}", encoder.spec)
            assert report.encoded == args.items

        rounds = []
        for round_ in range(args.repeats):  # alternated, so that load from other processes hits both alike
            bare_wall, bare_cpu = timed(bare)
            pipe_wall, pipe_cpu = timed(lambda: pipeline(round_))
            rounds.append({"bare_items_per_s": args.items / bare_wall, "pipeline_items_per_s": args.items / pipe_wall,
                           "bare_cpu_ms_per_item": 1000 * bare_cpu / args.items,
                           "pipeline_cpu_ms_per_item": 1000 * pipe_cpu / args.items})
        vision_wall, _ = min(timed(lambda: [encoder._encode_images(encoder.normalize(chunk)) for chunk in images])
                             for _ in range(2))

        def column(name):
            return [round(r[name], 2) for r in rounds]

        wall_ratios = [r["pipeline_items_per_s"] / r["bare_items_per_s"] for r in rounds]
        cpu_ratios = [r["bare_cpu_ms_per_item"] / r["pipeline_cpu_ms_per_item"] for r in rounds]
        return {
            "benchmark": "throughput", "machine": machine(), "arch": args.arch, "device": str(encoder.device),
            "autocast": str(encoder.autocast_dtype), "torch_threads": torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0],
            "items": args.items, "with_image": image_count, "batch_size": args.batch_size,
            "num_workers": args.num_workers, "model_load_s": round(load_seconds, 2),
            **{name: column(name) for name in rounds[0]},
            "wall_ratio_per_round": [round(r, 3) for r in wall_ratios],
            "wall_ratio_median": round(statistics.median(wall_ratios), 3),
            "wall_ratio_of_bests": round(max(column("pipeline_items_per_s")) / max(column("bare_items_per_s")), 3),
            "cpu_ratio_per_round": [round(r, 3) for r in cpu_ratios],
            "cpu_ratio_median": round(statistics.median(cpu_ratios), 3),
            "vision_images_per_s": round(image_count / vision_wall, 1),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _encode_args(batch) -> dict:
    return {"tokens": batch["tokens"], "lengths": batch["length"], "images": batch["images"],
            "has_image": batch["has_image"]}


def run_incremental(args) -> dict:
    import torch
    from PIL import Image

    from pipeline.features import extract_features
    from pipeline.hashing import hash_file

    work = Path(tempfile.mkdtemp(prefix="bench-features-"))
    try:
        items = synthetic_items(work, args.items)
        encoder, load_seconds = loaded_encoder(args)
        store = work / "store"

        def timed():
            started = time.perf_counter()
            report = extract_features(items, store, spec_from(args))
            return time.perf_counter() - started, report

        full_seconds, full = timed()
        changed = np.random.default_rng(1).choice(args.items, max(1, args.items // 100), replace=False)
        for n, index in enumerate(changed):
            if n % 2 == 0 or items.image_files[index] is None:
                items.texts[index] += " (edited)"
            else:  # a new image file for this entity
                path = work / "images" / f"edited{index}.jpg"
                Image.open(items.image_files[index]).rotate(90).save(path, "JPEG", quality=90)
                items.image_files[index], items.image_digests[index] = str(path), hash_file(path)
        refresh_seconds, refresh = timed()
        noop_seconds, noop = timed()
        return {
            "benchmark": "incremental", "machine": machine(), "arch": args.arch, "device": str(encoder.device),
            "torch_threads": torch.get_num_threads(), "load_average_1min": os.getloadavg()[0],
            "items": args.items, "batch_size": args.batch_size, "num_workers": args.num_workers,
            "changed": len(changed), "model_load_s": round(load_seconds, 2),
            "full_s": round(full_seconds, 2), "full_encoded": full.encoded,
            "refresh_s": round(refresh_seconds, 2), "refresh_encoded": refresh.encoded,
            "noop_s": round(noop_seconds, 3), "noop_encoded": noop.encoded,
            "refresh_over_full": round(refresh_seconds / full_seconds, 4),
            "noop_over_full": round(noop_seconds / full_seconds, 4),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_rss(args) -> dict:
    import torch

    from model.features import MMoEFeatures
    from pipeline.features import FeatureStore, StoreWriter, load_encoder

    dims = load_encoder(spec_from(args)).dims
    work = Path(tempfile.mkdtemp(prefix="bench-features-", dir=args.workdir))
    try:
        store_root = work / "store"
        rng = np.random.default_rng(0)
        pool = 2048  # distinct random rows, tiled: generating 100k random rows would dominate the run
        fields = {
            "text_embeds": (dims["D"],), "text_tokens": (dims["L"], dims["Wt"]),
            "image_embeds": (dims["D"],), "image_tokens": (dims["P1"], dims["Wv"]),
        }
        random_rows = {name: torch.from_numpy(rng.standard_normal((pool, *shape), dtype=np.float32)).half()
                       for name, shape in fields.items()}
        mask = torch.ones((pool, dims["L"]), dtype=torch.bool)
        ids = [f"Q{i}" for i in range(args.items)]
        started = time.perf_counter()
        with StoreWriter(store_root, {"arch": args.arch, "weights": "synthetic"}, {"kind": "entity"}) as writer:
            writer.set_dims(dims)
            for start in range(0, args.items, 1024):
                rows = np.arange(start, min(start + 1024, args.items)) % pool
                batch = MMoEFeatures(**{name: values[rows] for name, values in random_rows.items()},
                                     text_mask=mask[rows], has_image=torch.ones(len(rows), dtype=torch.bool))
                chunk = ids[start:start + len(rows)]
                writer.add(chunk, chunk, batch, [False] * len(rows), [[] for _ in rows])
            writer.commit(ids, ids)
        write_seconds = time.perf_counter() - started
        disk = FeatureStore.open(store_root).disk_bytes()
        probe = subprocess.run([sys.executable, __file__, "_rss_probe", str(store_root)],
                               capture_output=True, text=True)
        if probe.returncode:
            raise RuntimeError(f"the RSS probe failed:\n{probe.stderr}")
        return {
            "benchmark": "rss", "machine": machine(), "arch": args.arch, "dims": dims, "items": args.items,
            "write_s": round(write_seconds, 1), "disk_bytes": disk,
            "raw_float16_bytes": args.items * sum(int(np.prod(s)) for s in fields.values()) * 2,
            **json.loads(probe.stdout.strip().splitlines()[-1]),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def rss_probe(store_root: str) -> None:
    """In a fresh process: peak RSS (VmHWM) after each reader step."""
    def peak_mib() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM")

    import torch  # noqa: F401  (imported before the baseline: it is part of every reader's process)

    from pipeline.features import FeatureStore

    steps = {"baseline_mib": peak_mib()}
    store = FeatureStore.open(store_root)
    steps["open_mib"] = peak_mib()
    rng = np.random.default_rng(0)
    timings = {}
    for count in (256, 4096):
        rows = rng.choice(len(store), min(count, len(store)), replace=False)
        started = time.perf_counter()
        batch = store.take(rows)
        timings[f"take_{count}_ms"] = round(1000 * (time.perf_counter() - started), 1)
        steps[f"take_{count}_mib"] = peak_mib()
        del batch
    started = time.perf_counter()
    norms = np.linalg.norm(store.pooled("text").astype(np.float32), axis=1)
    timings["pooled_text_scan_ms"] = round(1000 * (time.perf_counter() - started), 1)
    steps["pooled_scan_mib"] = peak_mib()
    assert len(norms) == len(store)
    print(json.dumps({"peak_rss_mib": {k: round(v, 1) for k, v in steps.items()}, **timings}))


def throughput_report(r: dict) -> tuple:
    """The per-round figures and their ratios, as the suite's report shows them."""
    columns = ["round", "bare items/s", "pipeline items/s", "pipeline/bare items/s", "bare CPU ms/item",
               "pipeline CPU ms/item", "bare/pipeline CPU ms"]
    rows = [[n + 1, *figures] for n, figures in enumerate(zip(
        r["bare_items_per_s"], r["pipeline_items_per_s"], r["wall_ratio_per_round"], r["bare_cpu_ms_per_item"],
        r["pipeline_cpu_ms_per_item"], r["cpu_ratio_per_round"]))]
    rows += [["median", "", "", r["wall_ratio_median"], "", "", r["cpu_ratio_median"]],
             ["best vs best", max(r["bare_items_per_s"]), max(r["pipeline_items_per_s"]), r["wall_ratio_of_bests"],
              "", "", ""]]
    setup = (f"{r['items']} items ({r['with_image']} with an image), {r['arch']} on {r['device']} (autocast "
             f"{r['autocast']}), batch {r['batch_size']}, {r['num_workers']} DataLoader workers, "
             f"{r['torch_threads']} torch threads; {r['machine']}; load average {r['load_average_1min']:.1f}")
    notes = [f"vision tower alone: {r['vision_images_per_s']} images/s",
             f"model load {r['model_load_s']} s (once per process, not in the rounds)"]
    table = {"title": f"Pipeline against the bare forward, alternated rounds: {len(rows) - 2}", "columns": columns,
             "rows": rows}
    return "CLIP feature extraction: throughput", setup, [table], notes


def incremental_report(r: dict) -> tuple:
    columns = ["run", "wall s", "items encoded", "share of the full run"]
    rows = [["full", r["full_s"], r["full_encoded"], 1.0],
            [f"refresh ({r['changed']} changed)", r["refresh_s"], r["refresh_encoded"], r["refresh_over_full"]],
            ["nothing changed", r["noop_s"], r["noop_encoded"], r["noop_over_full"]]]
    setup = (f"{r['items']} entities, {r['arch']} on {r['device']}, batch {r['batch_size']}, {r['num_workers']} "
             f"DataLoader workers, {r['torch_threads']} torch threads; {r['machine']}; "
             f"load average {r['load_average_1min']:.1f}")
    table = {"title": f"Refresh after {r['changed']} of {r['items']} entities changed, against a full extraction",
             "columns": columns, "rows": rows}
    return ("CLIP feature extraction: incremental", setup, [table],
            [f"model load {r['model_load_s']} s (once per process, not in the runs)"])


REPORTS = {"throughput": throughput_report, "incremental": incremental_report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=["throughput", "incremental", "rss", "_rss_probe"])
    parser.add_argument("store", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--arch", default="mel-tiny-clip")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--items", type=int)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="where the rss store is written (default: $TMPDIR)")
    parser.add_argument("--json", help="also write the results here (bench/report.py's format; throughput and "
                                       "incremental)")
    args = parser.parse_args()
    if args.json and args.benchmark not in REPORTS:
        parser.error(f"--json is written by {' and '.join(REPORTS)} only")
    if args.benchmark == "_rss_probe":
        return rss_probe(args.store)
    args.items = args.items or {"throughput": 512, "incremental": 2000, "rss": 100_000}[args.benchmark]
    run = {"throughput": run_throughput, "incremental": run_incremental, "rss": run_rss}[args.benchmark]
    result = run(args)
    print(json.dumps(result, indent=1))
    if args.json:
        write_json(args.json, *REPORTS[args.benchmark](result))


if __name__ == "__main__":
    main()
