"""The benchmark suite: every measurement we quote, one command, one Markdown report.

    python -m bench --quick                 # CI smoke: every section at toy sizes, a few minutes
    python -m bench                         # the real measurement (about an hour on a 2-core CPU machine)
    python -m bench --gpu                   # on an NVIDIA GPU machine: fp16/bf16, ViT-B-32, vLLM (bench/gpu.sh)
    python -m bench --only faiss evaluation # some sections
    python -m bench --report PATH           # where the report goes (default: bench/REPORT.md, or
                                            # bench/REPORT-quick.md / bench/REPORT-gpu.md)

Each section runs one of the bench scripts in its own process (so its peak RSS and its torch threads are its
own) with `--json`, and the report is rendered from those files alone: the machine and package versions on
top, then every table with the exact command that produced it. Ratios inside a table come from the same run.
A section that fails is reported as failed with the end of its log, and the suite exits non-zero.
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
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from bench.report import markdown_table

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "transformers", "open_clip_torch", "faiss-cpu", "faiss-gpu", "dagster", "duckdb", "pyarrow",
            "numpy", "vllm")


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    quick: list[list[str]]  # one argument list per run of the script
    full: list[list[str]]
    gpu: list[list[str]]
    script: str


SECTIONS = [  # the order of a full run: what matters most first (the report is written after each)
    Section("pipeline", "The pipeline from the README: cold, warm, incremental", script="bench/pipeline_runs.py",
            quick=[["--entities", "40", "--mentions", "60", "--work", "{work}/pipeline"]],
            full=[["--work", "{work}/pipeline-demo"]],
            gpu=[]),
    Section("description", "Description choice: scorers and the stage's prompts/s", script="bench/description_selection.py",
            quick=[["--limit", "4", "--speeds", "--speed-prompts", "8", "--compare-previous", "--lake", "{work}/llm"]],
            full=[["--speeds", "--compare-previous", "--lake", "{work}/llm"]],
            gpu=[["--backend", "vllm", "--dtype", "bfloat16", "--batch-size", "512", "--lake", "{work}/llm"]]),
    Section("evaluation", "Evaluation: rerank@K against scoring the full KB (and training samples/s)",
            script="bench/mmoe_eval.py",
            quick=[["--entities", "5000", "--test-mentions", "20", "--repeat", "1", "--top-k", "10,50,100",
                    "--lake", "{work}/eval"]],
            full=[["--entities", "10000", "--top-k", "10,50,100", "--lake", "{work}/eval-10k"],
                  ["--entities", "100000", "--test-mentions", "60", "--top-k", "10,50,100", "--lake", "{work}/eval-100k"]],
            gpu=[["--entities", "110000", "--dims", "vit-b-32", "--device", "cuda", "--top-k", "10,50,100",
                  "--lake", "{work}/eval"]]),
    Section("faiss", "FAISS candidate index: Flat, IVF, HNSW", script="bench/faiss_index.py",
            quick=[["--entities", "20000", "--dim", "64", "--queries", "500", "--topics", "200"]],
            full=[["--entities", "100000"], ["--entities", "1000000", "--dim", "64", "--queries", "2000"]],
            gpu=[]),
    Section("features", "CLIP feature extraction: pipeline against the bare forward", script="bench/feature_extraction.py",
            quick=[["throughput", "--items", "32", "--repeats", "1"], ["incremental", "--items", "200"]],
            full=[["throughput"], ["incremental"]],
            gpu=[["throughput", "--device", "cuda", "--arch", "ViT-B-32", "--precision", "fp16", "--items", "8192",
                  "--batch-size", "256", "--num-workers", "8"]]),
    Section("scale-out", "Scale-out: a backfill of the KB shards (multiprocess, Ray) against one process",
            script="bench/scale_out.py",
            quick=[["--entities", "24", "--mentions", "30", "--shards", "2", "--work", "{work}/scale-out"]],
            full=[["--work", "{work}/scale-out"],
                  ["--seed", "7", "--entities", "740", "--mentions", "120", "--work", "{work}/scale-out-740"]],
            gpu=[]),
    Section("dump", "WikiData dump indexing", script="bench/wikidata_dump_index.py",
            quick=[["--lines", "20000"]], full=[["--lines", "250000", "1000000"]], gpu=[]),
    # 4x the mentions; the generator's name pool caps a KB at about 740 entities (2.5x the demo's)
    Section("pipeline-4x", "The same on a dataset with four times the demo's mentions (other seed, other names)",
            script="bench/pipeline_runs.py", quick=[],
            full=[["--seed", "7", "--entities", "740", "--mentions", "3600", "--work", "{work}/pipeline-4x"]], gpu=[]),
]


def machine() -> list[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    lines = [f"- machine: {platform.node()}, {os.cpu_count()} CPUs ({cpu}), {memory:.0f} GiB memory, "
             f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
             f"- load average at start: {os.getloadavg()[0]:.2f}", f"- GPU: {gpu_name()}"]
    versions = []
    for package in PACKAGES:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return lines + ["- packages: " + ", ".join(versions)]


def gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:
        return "unknown (no torch)"


def run_section(section: Section, runs: list[list[str]], work: Path) -> list[str]:
    """The section's Markdown: per run, the command, then its tables; a failure shows its log's end."""
    out = [f"## {section.title}", ""]
    for number, arguments in enumerate(runs):
        arguments = [argument.replace("{work}", str(work)) for argument in arguments]  # a fresh folder per suite run
        result = work / f"{section.name}-{number}.json"
        command = [sys.executable, section.script, *arguments, "--json", str(result)]
        shown = " ".join(["python", section.script, *[a.replace(str(work), "$WORK") for a in arguments]])
        print(f"[bench] {shown}", flush=True)
        started = time.perf_counter()
        finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        out += [f"`{shown}` ({seconds:.0f} s)", ""]
        if finished.returncode or not result.exists():
            tail = (finished.stdout + finished.stderr).strip().splitlines()[-15:]
            out += [f"**FAILED** (exit {finished.returncode}):", "", "```", *tail, "```", ""]
            continue
        out += render(json.loads(result.read_text()))
    return out


def render(result: dict) -> list[str]:
    out = [f"*{result['setup']}*", ""]
    for table in result["tables"]:
        out += [f"**{table['title']}**", "", markdown_table(table["columns"], table["rows"]), ""]
    out += [f"- {note}" for note in result.get("notes", [])]
    return out + ([""] if result.get("notes") else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="toy sizes: a smoke test of every section")
    mode.add_argument("--gpu", action="store_true", help="the GPU measurements (needs CUDA and the gpu extra)")
    parser.add_argument("--only", nargs="+", choices=[s.name for s in SECTIONS])
    parser.add_argument("--report", type=Path)
    args = parser.parse_args(argv)
    profile = "quick" if args.quick else "gpu" if args.gpu else "full"
    report = args.report or ROOT / "bench" / ("REPORT.md" if profile == "full" else f"REPORT-{profile}.md")
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    lines = [f"# Benchmark report ({profile})", "", f"`python -m bench{'' if profile == 'full' else ' --' + profile}` "
             f"started {started}. Every figure below comes from this run; CLIP weights are randomly initialised "
             "from a fixed seed (no weights offline), which changes no timing.", "", *machine(), ""]
    failed = []
    with tempfile.TemporaryDirectory(prefix="mel-bench-") as temp:
        for section in SECTIONS:
            runs = getattr(section, profile)
            if not runs or (args.only and section.name not in args.only):
                continue
            body = run_section(section, runs, Path(temp))
            failed += [section.name] if any(line.startswith("**FAILED**") for line in body) else []
            lines += body
            report.write_text("\n".join(lines) + "\n")  # after every section: a long run shows progress
    print(f"[bench] report: {report}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
