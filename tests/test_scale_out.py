"""Scale-out as a user runs it: a backfill of the KB shards launched with `dagster job backfill`, one run per
shard, through the instance's run launcher: Dagster's default (a process per run) or dagster-ray's
RayRunLauncher on a local Ray cluster (a head and two worker nodes, started here). entity_features then
assembles the shards; it must hold what one process encodes, by value."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

from pipeline.demo import generate_demo_dataset
from pipeline.features import FeatureStore, store_dir
from pipeline.features.shards import KBShards, store_content_digest
from pipeline.index import IndexSettings, ItemVectors, update_entity_index
from pipeline.lake import Lake

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHARDS = KBShards(2)
INGEST = "key:mentions or key:entities or key:quarantine"
RUN_SECONDS = 300  # a run's process imports torch and open_clip: seconds each on two cores, more under load


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scale_out")
    return generate_demo_dataset(root / "dataset", seed=5, num_entities=24, num_mentions=30).out_dir


class Deployment:
    """A lake, a Dagster instance ($DAGSTER_HOME/dagster.yaml) and the environment every process shares."""

    def __init__(self, root: Path, dataset: Path, run_launcher: dict | None = None):
        self.lake = Lake(root / "mel")
        self.home = root / "mel" / "dagster"
        self.home.mkdir(parents=True)
        # DefaultRunCoordinator: a submitted run is launched at once (Dagster's default queue needs the daemon).
        config = {"telemetry": {"enabled": False},
                  "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"},
                  **({"run_launcher": run_launcher} if run_launcher else {})}
        (self.home / "dagster.yaml").write_text(json.dumps(config))  # JSON is YAML
        self.env = {**os.environ, "MEL_HOME": str(self.lake.root), "DAGSTER_HOME": str(self.home),
                    "MEL_DATASET_DIR": str(dataset), "MEL_KB_SHARDS": str(SHARDS.count),
                    "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    def run(self, *command: str) -> subprocess.CompletedProcess:
        done = subprocess.run(command, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=RUN_SECONDS)
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    def materialize(self, selection: str) -> str:
        """`python -m assets.materialize`'s plan and its runs' log."""
        done = self.run(str(BIN / "python"), "-m", "assets.materialize", "--select", selection)
        return done.stdout + done.stderr

    def backfill(self, partitions: list[str]) -> dict[str, DagsterRunStatus]:
        """`dagster job backfill` of embed_kb_shards; waits for its runs; each partition's run status."""
        output = self.run(str(BIN / "dagster"), "job", "backfill", "-w", "workspace.yaml", "-j", "embed_kb_shards",
                          "--partitions", ",".join(partitions), "--noprompt").stdout
        backfill_id = output.strip().rsplit("`", 2)[-2]
        with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(self.home))) as instance:
            deadline = time.monotonic() + RUN_SECONDS
            while True:
                runs = instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id}))
                if len(runs) == len(partitions) and all(run.is_finished for run in runs):
                    return {run.tags["dagster/partition"]: run.status for run in runs}
                assert time.monotonic() < deadline, f"backfill {backfill_id} did not finish: {runs}"
                time.sleep(1)



def one_process_store(root: Path, dataset: Path, threads: int | None = None) -> FeatureStore:
    """What one process encodes for the whole KB: entity_features materialized on a fresh lake where no shard
    ran, on `threads` CPU threads (the float reductions of a CPU forward pass depend on how many split them)."""
    deployment = Deployment(root, dataset)
    if threads:
        deployment.env["OMP_NUM_THREADS"] = str(threads)
    deployment.materialize(INGEST)
    assert "24 of 24 items to encode" in deployment.materialize("key:entity_features")
    return FeatureStore.open(store_dir(deployment.lake, "entity_features"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster(tmp_path):
    """A head (no CPUs: it schedules and serves job submission) and two worker nodes of one CPU each.
    `ray stop` ends every Ray process of this machine: the test owns the machine's Ray."""
    ray = str(BIN / "ray")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}
    port, dashboard = free_port(), free_port()
    start = dict(env=env, check=True, capture_output=True, timeout=180)
    try:
        subprocess.run([ray, "start", "--head", "--num-cpus", "0", "--port", str(port), "--include-dashboard",
                        "true", "--dashboard-port", str(dashboard)], **start)
        for _ in range(2):
            subprocess.run([ray, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1"], **start)
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=180)


def ray_jobs(address: str) -> list:
    """The cluster's Ray jobs of Dagster runs, once each has ended (a run is done a moment before its job)."""
    from ray.job_submission import JobSubmissionClient

    client, deadline = JobSubmissionClient(address), time.monotonic() + 60
    while True:
        jobs = [job for job in client.list_jobs() if job.submission_id.startswith("dagster-run-")]
        if all(job.status.is_terminal() for job in jobs) or time.monotonic() > deadline:
            return jobs
        time.sleep(1)


def test_a_ray_backfill_over_two_workers_assembles_what_one_process_encodes(dataset, tmp_path, ray_cluster):
    launcher = {"module": "dagster_ray", "class": "RayRunLauncher",
                "config": {"ray": {"address": ray_cluster, "num_cpus": 1,
                                   "env_vars": ["MEL_HOME", "MEL_DATASET_DIR", "MEL_KB_SHARDS", "DAGSTER_HOME"]}}}
    deployment = Deployment(tmp_path, dataset, run_launcher=launcher)
    deployment.materialize(INGEST)

    statuses = deployment.backfill(SHARDS.keys)

    assert statuses == {"0": DagsterRunStatus.SUCCESS, "1": DagsterRunStatus.SUCCESS}
    jobs = ray_jobs(ray_cluster)
    assert [job.status.value for job in jobs] == ["SUCCEEDED", "SUCCEEDED"], [job.message for job in jobs]
    assert len({job.driver_node_id for job in jobs}) == 2  # one shard on each worker, at the same time
    assembly = deployment.materialize("key:entity_features")
    assert "(2 part(s) linked from the shard stores); nothing to encode" in assembly

    assembled = FeatureStore.open(store_dir(deployment.lake, "entity_features"))
    # A Ray job of num_cpus=1 runs with OMP_NUM_THREADS=1; on other thread counts the image token states
    # differ in their last float16 bit (seen here), which a content hash does not forgive.
    one_process = one_process_store(tmp_path / "one_process", dataset, threads=1)
    assert len(assembled) == 24
    assert store_content_digest(assembled) == store_content_digest(one_process)
    settings = IndexSettings(use_gpu="never")
    built = [update_entity_index(ItemVectors.from_store(store), tmp_path / name, settings)
             for name, store in (("index_assembled", assembled), ("index_one_process", one_process))]
    assert built[0].fingerprint == built[1].fingerprint  # the same vectors under the same KB indices


def test_a_failed_shard_fails_alone_and_its_rerun_completes_the_kb(dataset, tmp_path):
    deployment = Deployment(tmp_path, dataset)  # Dagster's default run launcher: a process per run
    deployment.materialize(INGEST)
    broken = SHARDS.store_dir(deployment.lake, 1)
    broken.parent.mkdir(parents=True)
    broken.write_text("not a directory")  # shard 1's storage fails, as a full or unmounted disk would

    assert deployment.backfill(SHARDS.keys) == {"0": DagsterRunStatus.SUCCESS, "1": DagsterRunStatus.FAILURE}
    assert FeatureStore.open(SHARDS.store_dir(deployment.lake, 0)).ids.tolist() == \
        [str(i) for i in range(0, 24, 2)]

    broken.unlink()
    assert deployment.backfill(["1"]) == {"1": DagsterRunStatus.SUCCESS}
    assembly = deployment.materialize("key:entity_features")

    assert "nothing to encode" in assembly
    assembled = FeatureStore.open(store_dir(deployment.lake, "entity_features"))
    assert store_content_digest(assembled) == store_content_digest(one_process_store(tmp_path / "one", dataset))
