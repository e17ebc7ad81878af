"""Scale-out as a user runs it: a backfill of the KB shards launched with `dagster job backfill`, one run per
shard, through the instance's run launcher: Dagster's default (a process per run) or dagster-ray's
RayRunLauncher on a local Ray cluster (a head and two worker nodes, started here). entity_features then
assembles the shards; it must hold what one process encodes, by value, and give the same index.

The deployment helpers are bench/scale_out.py's, which measures the same on the demo KB."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster._core.storage.dagster_run import DagsterRunStatus

from bench.scale_out import ENTITY_SIDE, INGEST, Deployment, local_ray_cluster, ray_jobs, ray_launcher
from pipeline.features import FeatureStore
from pipeline.features.shards import KBShards, store_content_digest
from synthetic.demo import generate_demo_dataset

pytestmark = pytest.mark.slow
SHARDS = KBShards(2)
SUCCESS, FAILURE = DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scale_out")
    return generate_demo_dataset(root / "dataset", seed=5, num_entities=24, num_mentions=30).out_dir


def one_process(root: Path, dataset: Path, threads: int | None = None) -> Deployment:
    """The entity side materialized where no shard ran: entity_features encodes the whole KB itself, on
    `threads` CPU threads (a CPU forward pass rounds some token states differently on another thread count)."""
    deployment = Deployment(root, dataset, SHARDS, threads=threads)
    deployment.materialize(INGEST)
    assert "24 of 24 items to encode" in deployment.materialize(ENTITY_SIDE)
    return deployment


def test_a_ray_backfill_over_two_workers_gives_the_features_and_index_of_one_process(dataset, tmp_path):
    with local_ray_cluster(workers=2, cpus=1) as address:
        deployment = Deployment(tmp_path / "ray", dataset, SHARDS, run_launcher=ray_launcher(address, cpus=1))
        deployment.materialize(INGEST)

        assert deployment.backfill(SHARDS.keys) == {"0": SUCCESS, "1": SUCCESS}

        jobs = ray_jobs(address)
        assert [job.status.value for job in jobs] == ["SUCCEEDED", "SUCCEEDED"], [job.message for job in jobs]
        assert len({job.driver_node_id for job in jobs}) == 2  # one shard on each worker, at the same time
    assembly = deployment.materialize(ENTITY_SIDE)
    assert "(2 part(s) linked from the shard stores); nothing to encode" in assembly

    reference = one_process(tmp_path / "one_process", dataset, threads=1)  # a Ray job of 1 CPU runs 1 thread
    assert len(deployment.entity_store()) == 24
    assert store_content_digest(deployment.entity_store()) == store_content_digest(reference.entity_store())
    assert deployment.index_fingerprint() == reference.index_fingerprint()


def test_a_failed_shard_fails_alone_and_its_rerun_completes_the_kb(dataset, tmp_path):
    deployment = Deployment(tmp_path / "local", dataset, SHARDS)  # the default run launcher: a process per run
    deployment.materialize(INGEST)
    broken = SHARDS.store_dir(deployment.lake, 1)
    broken.parent.mkdir(parents=True)
    broken.write_text("not a directory")  # shard 1's storage fails, as a full or unmounted disk would

    assert deployment.backfill(SHARDS.keys) == {"0": SUCCESS, "1": FAILURE}
    assert deployment.failures() == {"1": f"Cannot write the feature store at {broken}: Not a directory "
                                          f"({broken / 'parts'})."}
    stored = FeatureStore.open(SHARDS.store_dir(deployment.lake, 0)).ids.tolist()
    assert stored and all(int(kb_index) % 2 == 0 for kb_index in stored)

    broken.unlink()
    assert deployment.backfill(["1"]) == {"1": SUCCESS}
    assert "nothing to encode" in deployment.materialize(ENTITY_SIDE)

    reference = one_process(tmp_path / "one_process", dataset)
    assert store_content_digest(deployment.entity_store()) == store_content_digest(reference.entity_store())
    assert deployment.index_fingerprint() == reference.index_fingerprint()
