"""A backfill of the KB shards, as a user launches it, against one process: same features, same index, how long.

    python bench/scale_out.py                                          # the demo KB (300 entities), 4 shards
    python bench/scale_out.py --seed 7 --entities 740 --mentions 120   # another KB (other names, 2.5x the size)
    python bench/scale_out.py --entities 24 --mentions 30 --shards 2   # a quick look (CI smoke)

Every deployment is a fresh lake and Dagster instance under `--work`, sharing one generated dataset, and every
step is a user's command in its own process:

- one process: `python -m assets.materialize --select 'key:entity_features or key:entity_index'` where no
  shard ran, so entity_features encodes the whole KB itself (the reference);
- multiprocess: `dagster job backfill -j embed_kb_shards --partitions ...` with Dagster's default run launcher
  (a process per run, all at once), then the same materialize command, which now links the shards;
- Ray: the same backfill with dagster-ray's RayRunLauncher on a local Ray cluster started here (a head
  without CPUs and `--ray-workers` nodes of `--ray-cpus` CPUs): each shard's run is a Ray job.

Same features: `store_content_digest` of the assembled store against the reference's; same index:
entity_index's fingerprint (every KB index with the digest of its vectors, the kind, the frozen statistics).
A Ray job of N CPUs runs torch on N threads (OMP_NUM_THREADS), and a CPU forward pass on another thread count
rounds some token states differently: the Ray row is compared with a reference run on as many threads.
A last deployment blocks one shard's store with a file: that shard's run fails alone, a re-run of it
completes the KB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg  # noqa: E402
from dagster._core.events import DagsterEventType  # noqa: E402
from dagster._core.instance.ref import InstanceRef  # noqa: E402
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter  # noqa: E402

from assets.resources import failure_sentence  # noqa: E402
from bench.pipeline_runs import generate  # noqa: E402
from bench.report import markdown_table, write_json  # noqa: E402
from pipeline import catalog  # noqa: E402
from pipeline.features import FeatureStore  # noqa: E402
from pipeline.features.shards import KBShards, store_content_digest  # noqa: E402
from pipeline.index import stored_index_identity  # noqa: E402
from pipeline.lake import Lake  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
INGEST = "key:mentions or key:entities or key:quarantine"
ENTITY_SIDE = "key:entity_features or key:entity_index"
RUN_SECONDS = 600  # a run's process imports torch and open_clip: seconds each on two cores, more under load
# DefaultRunCoordinator: a submitted run is launched at once (Dagster's default queue needs the daemon).
LAUNCH_AT_ONCE = {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}


class Deployment:
    """A lake, a Dagster instance ($DAGSTER_HOME/dagster.yaml) and the environment each of its processes gets."""

    def __init__(self, root: Path, dataset: Path, shards: KBShards, run_launcher: dict | None = None,
                 threads: int | None = None):
        self.lake, self.home, self.shards = Lake(root / "mel"), root / "mel" / "dagster", shards
        self.home.mkdir(parents=True)
        config = {"telemetry": {"enabled": False}, "run_coordinator": LAUNCH_AT_ONCE,
                  **({"run_launcher": run_launcher} if run_launcher else {})}
        (self.home / "dagster.yaml").write_text(json.dumps(config))  # JSON is YAML
        self.env = {**os.environ, "MEL_HOME": str(self.lake.root), "DAGSTER_HOME": str(self.home),
                    "MEL_DATASET_DIR": str(dataset), "MEL_KB_SHARDS": str(shards.count),
                    "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                    **({"OMP_NUM_THREADS": str(threads)} if threads else {})}

    def run(self, *command: str) -> str:
        """Run a command of this deployment; its stdout and stderr (it must succeed)."""
        done = subprocess.run(command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=RUN_SECONDS)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done.stdout + done.stderr

    def materialize(self, selection: str) -> str:
        """`python -m assets.materialize --select selection`: its plan and its runs' log."""
        return self.run(str(BIN / "python"), "-m", "assets.materialize", "--select", selection)

    def backfill(self, partitions: list[str]) -> dict[str, DagsterRunStatus]:
        """`dagster job backfill` of embed_kb_shards; waits for its runs; each partition's run status."""
        output = self.run(str(BIN / "dagster"), "job", "backfill", "-w", "workspace.yaml", "-j", "embed_kb_shards",
                          "--partitions", ",".join(partitions), "--noprompt")
        backfill_id = re.search(r"Launched backfill job `(\w+)`", output).group(1)
        with self.instance() as instance:
            deadline = time.monotonic() + RUN_SECONDS
            while True:
                runs = instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id}))
                if len(runs) == len(partitions) and all(run.is_finished for run in runs):
                    return {run.tags["dagster/partition"]: run.status for run in runs}
                if time.monotonic() > deadline:
                    raise TimeoutError(f"backfill {backfill_id} did not finish in {RUN_SECONDS} s: {runs}")
                time.sleep(0.5)

    def failures(self) -> dict[str, str]:
        """Each failed run's partition and the sentence its step failed with."""
        with self.instance() as instance:
            failed = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.FAILURE]))
            return {run.tags.get("dagster/partition", ""): failure_sentence(event.dagster_event.step_failure_data)
                    for run in failed
                    for event in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_FAILURE)}

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(self.home)))

    def entity_store(self) -> FeatureStore:
        return FeatureStore.open(catalog.entity_store_dir(self.lake))

    def index_fingerprint(self) -> str:
        return stored_index_identity(catalog.entity_index_dir(self.lake))["fingerprint"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_ray_cluster(workers: int = 2, cpus: int = 1):
    """A head without CPUs (it schedules and serves job submission) and `workers` nodes of `cpus` CPUs each, all
    on this machine; yields the job submission address. `ray stop` ends every Ray process of the machine."""
    ray = str(BIN / "ray")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}
    port, dashboard = free_port(), free_port()
    start = dict(env=env, check=True, capture_output=True, timeout=180)
    try:
        subprocess.run([ray, "start", "--head", "--num-cpus", "0", "--port", str(port), "--include-dashboard",
                        "true", "--dashboard-port", str(dashboard)], **start)
        for _ in range(workers):
            subprocess.run([ray, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", str(cpus)], **start)
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=180)


def ray_launcher(address: str, cpus: int) -> dict:
    """dagster.yaml's run_launcher for RayRunLauncher; the lake's and the shards' settings travel with each job."""
    return {"module": "dagster_ray", "class": "RayRunLauncher",
            "config": {"ray": {"address": address, "num_cpus": cpus,
                               "env_vars": ["MEL_HOME", "MEL_DATASET_DIR", "MEL_KB_SHARDS", "DAGSTER_HOME"]}}}


def ray_jobs(address: str) -> list:
    """The cluster's Ray jobs of Dagster runs, once each has ended (a run ends a moment before its job)."""
    from ray.job_submission import JobSubmissionClient

    client, deadline = JobSubmissionClient(address), time.monotonic() + 60
    while True:
        jobs = [job for job in client.list_jobs() if job.submission_id.startswith("dagster-run-")]
        if all(job.status.is_terminal() for job in jobs) or time.monotonic() > deadline:
            return jobs
        time.sleep(1)


def timed(function, *args):
    started = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - started


def one_process(root: Path, dataset: Path, shards: KBShards, threads: int | None = None) -> dict:
    deployment = Deployment(root, dataset, shards, threads=threads)
    deployment.materialize(INGEST)
    log, seconds = timed(deployment.materialize, ENTITY_SIDE)
    if "part(s) linked" in log:
        raise AssertionError("the one-process reference linked shard parts: it should have encoded everything")
    return {"assembly": seconds, "digest": store_content_digest(deployment.entity_store()),
            "index": deployment.index_fingerprint(), "entities": len(deployment.entity_store())}


def sharded(deployment: Deployment) -> dict:
    """Backfill every shard, then materialize the entity side; the figures of both."""
    deployment.materialize(INGEST)
    statuses, backfill = timed(deployment.backfill, deployment.shards.keys)
    if set(statuses.values()) != {DagsterRunStatus.SUCCESS}:
        raise AssertionError(f"shard runs did not all succeed: {statuses}")
    with deployment.instance() as instance:
        runs = [instance.get_run_stats(run.run_id) for run in instance.get_runs(RunsFilter(job_name="embed_kb_shards"))]
    log, assembly = timed(deployment.materialize, ENTITY_SIDE)
    return {"backfill": backfill, "slowest_run": max(r.end_time - r.start_time for r in runs), "assembly": assembly,
            "linked": "part(s) linked from the shard stores); nothing to encode" in log,
            "digest": store_content_digest(deployment.entity_store()), "index": deployment.index_fingerprint()}


def failure_and_retry(root: Path, dataset: Path, shards: KBShards, reference: dict) -> list:
    deployment = Deployment(root, dataset, shards)
    deployment.materialize(INGEST)
    broken = shards.store_dir(deployment.lake, shards.count - 1)
    broken.parent.mkdir(parents=True)
    broken.write_text("not a directory")  # the last shard's storage fails, as a full or unmounted disk would
    first = deployment.backfill(shards.keys)
    broken.unlink()
    retry = deployment.backfill([shards.keys[-1]])
    deployment.materialize(ENTITY_SIDE)
    complete = store_content_digest(deployment.entity_store()) == reference["digest"]
    failed = sorted(key for key, status in first.items() if status != DagsterRunStatus.SUCCESS)
    return [", ".join(failed) or "none", sum(s == DagsterRunStatus.SUCCESS for s in first.values()),
            retry[shards.keys[-1]].value, "yes" if complete else "NO"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--entities", type=int, default=300)
    parser.add_argument("--mentions", type=int, default=900)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--ray-workers", type=int, default=2)
    parser.add_argument("--ray-cpus", type=int, default=1, help="CPUs of each Ray worker node and of each run")
    parser.add_argument("--work", default="/tmp/mel-bench-scale-out")
    parser.add_argument("--json", help="also write the results here (bench/report.py's format)")
    args = parser.parse_args()
    work, shards = Path(args.work), KBShards(args.shards)
    shutil.rmtree(work, ignore_errors=True)
    dataset = work / "dataset"
    generate(dataset, args.seed, args.entities, args.mentions)

    reference = one_process(work / "one-process", dataset, shards)
    reference_ray = one_process(work / "one-process-ray-threads", dataset, shards, threads=args.ray_cpus)
    multiprocess = sharded(Deployment(work / "multiprocess", dataset, shards))
    with local_ray_cluster(args.ray_workers, args.ray_cpus) as address:
        ray = sharded(Deployment(work / "ray", dataset, shards, run_launcher=ray_launcher(address, args.ray_cpus)))
        jobs = ray_jobs(address)
    failure = failure_and_retry(work / "failure", dataset, shards, reference)

    def same(result, against):
        return ("yes" if result["digest"] == against["digest"] else "NO",
                "yes" if result["index"] == against["index"] else "NO")

    rows = [["one process (no shards)", "-", "-", f"{reference['assembly']:.1f}", f"{reference['assembly']:.1f}",
             "reference", "reference"]]
    for name, result, against in (("multiprocess (default run launcher)", multiprocess, reference),
                                  (f"Ray ({args.ray_workers} workers x {args.ray_cpus} CPU)", ray, reference_ray)):
        rows.append([name, f"{result['backfill']:.1f}", f"{result['slowest_run']:.1f}", f"{result['assembly']:.1f}",
                     f"{result['backfill'] + result['assembly']:.1f}", *same(result, against)])
    setup = (f"dataset seed {args.seed}, {reference['entities']} usable entities, {shards.count} shards, "
             f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    columns = ["engine", "backfill wall s", "slowest shard run s", "entity_features + entity_index s", "total s",
               "same features (content hash)", "same index (fingerprint)"]
    nodes = len({job.driver_node_id for job in jobs})
    notes = [f"Ray: {len(jobs)} jobs ({sum(job.status.value == 'SUCCEEDED' for job in jobs)} succeeded) on "
             f"{nodes} worker node(s); its row is compared with a one-process run on {args.ray_cpus} thread(s) "
             f"(OMP_NUM_THREADS, as in a Ray job of {args.ray_cpus} CPU(s)).",
             "Against the one-process run on this machine's default threads the Ray features are "
             + ("also identical." if ray["digest"] == reference["digest"] else
                "not byte-identical (token states round differently on another thread count)."),
             "The assembly linked the shards' parts without encoding: "
             f"multiprocess {'yes' if multiprocess['linked'] else 'NO'}, Ray {'yes' if ray['linked'] else 'NO'}."]
    failure_columns = ["failed shard(s)", "shards that succeeded", "re-run of the failed shard", "KB complete"]
    print(setup)
    print(markdown_table(columns, rows))
    print(markdown_table(failure_columns, [failure]))
    print("\n".join(notes))
    if args.json:
        write_json(args.json, "Scale-out: a backfill of the KB shards against one process", setup,
                   [{"title": "Backfill of every shard, then entity_features + entity_index", "columns": columns,
                     "rows": rows},
                    {"title": "The last shard's store blocked by a file: backfill, then a re-run of that shard",
                     "columns": failure_columns, "rows": [failure]}], notes)


if __name__ == "__main__":
    main()
