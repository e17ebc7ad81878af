"""`python -m assets.materialize` (what `make demo` runs): Dagster's staleness decides what runs.

A newcomer's three runs, each as its own process on a fresh lake and Dagster instance: a cold run
materializes everything; a warm one finds every asset up to date and runs nothing; after a new mention
arrives, the mention side runs again while the entity side, whose inputs kept their data versions, is
skipped. Every asset's line says why.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic.demo import generate_demo_dataset

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
ENTITY_SIDE = ("entities", "entity_feature_shards", "entity_features", "entity_index")
MENTION_SIDE = ("mentions", "wikidata_candidates", "mention_descriptions", "mention_features", "mention_candidates",
                "evaluation")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("materialize")
    generate_demo_dataset(root / "dataset", seed=5, num_entities=24, num_mentions=36)
    (root / "dagster").mkdir()
    (root / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return {**os.environ, "MEL_HOME": str(root / "mel"), "DAGSTER_HOME": str(root / "dagster"),
            "MEL_DATASET_DIR": str(root / "dataset")}


def materialize(env: dict) -> dict[str, str]:
    """Run the command; {asset: the reason its line gives} (the last line per asset, across its runs)."""
    finished = subprocess.run([sys.executable, "-m", "assets.materialize", "--select", "not group:linking"],
                              cwd=ROOT, env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    reasons = {}
    for line in finished.stdout.splitlines():
        name, _, reason = line.partition(": ")
        if reason.endswith((": run", ": skipped")):
            reasons[name] = reason
    return reasons


def test_cold_then_warm_then_one_new_mention(home):
    cold = materialize(home)
    assert cold and all(reason == "never materialized: run" for name, reason in cold.items()
                        if name != "entity_feature_shards")
    assert cold["entity_feature_shards"] == "partitions 0, 1, 2, 3 never materialized: run"  # one run each

    warm = materialize(home)
    assert set(warm) == set(cold)
    assert all(reason.endswith("skipped") and "up to date" in reason for reason in warm.values())

    test_split = next(Path(home["MEL_DATASET_DIR"]).glob("*_test.json"))
    records = json.loads(test_split.read_text())
    records.append({**records[0], "id": 10_000, "sentence": records[0]["sentence"] + " Said again."})
    test_split.write_text(json.dumps(records))
    after = materialize(home)

    assert "dataset_files has a new data version" in after["mentions"]
    for name in MENTION_SIDE[1:]:
        assert after[name].endswith(": run"), (name, after[name])
    for name in ENTITY_SIDE[1:]:  # entities were re-ingested with the same content: their consumers are skipped
        assert after[name].endswith("skipped"), (name, after[name])


def test_a_selection_that_names_nothing_is_one_sentence_and_runs_nothing(home):
    for selection, says in (("group:nope", "selects no asset"), ("key:(", "is not a Dagster asset selection")):
        finished = subprocess.run([sys.executable, "-m", "assets.materialize", "--select", selection],
                                  cwd=ROOT, env=home, capture_output=True, text=True)
        assert finished.returncode != 0 and says in finished.stderr and "Traceback" not in finished.stderr


def test_a_missing_dataset_folder_is_named_in_the_last_line_and_nothing_runs(home, tmp_path):
    env = {**home, "MEL_DATASET_DIR": str(tmp_path / "nowhere"), "MEL_HOME": str(tmp_path / "mel")}
    finished = subprocess.run([sys.executable, "-m", "assets.materialize", "--select", "not group:linking"],
                              cwd=ROOT, env=env, capture_output=True, text=True)

    assert finished.returncode == 1
    assert finished.stderr.strip().splitlines()[-1] == (
        f"Could not observe the dataset's files: dataset_files: The dataset directory {tmp_path / 'nowhere'} "
        "does not exist.")
    assert ": run" not in finished.stdout
