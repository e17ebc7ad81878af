"""Materialize what is stale or missing, in one process: `python -m assets.materialize --select 'not group:linking'`.

The command line of `make demo`. It does what a sensor's `RunRequest(stale_assets_only=True)`
does, from a terminal: Dagster decides what is stale, from code versions and the data
versions every asset records, with the same resolver the daemon uses for such requests.
First it observes `dataset_files`, so that a changed dataset file makes the ingest tables
stale; then it logs, per selected asset, why it is skipped or run, and runs the stale
and missing ones in-process (no process per step: a warm re-run that finds nothing stale
costs the Python start and one observation). What a run changes can make its downstream
stale, so it plans again after each run until nothing selected is stale. A partitioned asset (the KB shards,
the inbox files' links) is planned partition by partition, and each stale or missing partition runs alone,
as a backfill would run it.

`--all` runs every selected asset regardless; each stage still reuses its stored output
when its own fingerprint (inputs and settings) is unchanged. Use it after changing a
resource setting: Dagster's staleness follows code and data versions, not run config.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import dagster as dg
from dagster._core.definitions.asset_selection import DagsterInvalidAssetSelectionError
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContext

from assets.definitions import defs
from assets.resources import failure_sentence

OBSERVED = dg.AssetKey("dataset_files")


class InstanceLoadingContext(LoadingContext):
    """The minimal loading context the stale-status resolver reads the instance through."""

    def __init__(self, instance: dg.DagsterInstance):
        self._instance, self._loaders = instance, {}

    @property
    def instance(self) -> dg.DagsterInstance:
        return self._instance

    @property
    def loaders(self) -> dict:
        return self._loaders


@dataclass(frozen=True)
class Plan:
    """What to run: each stale or missing partition in a run of its own (as a backfill runs them), then the
    unpartitioned assets in one run; and one line per asset saying why it runs or not."""

    partitions: list[tuple[dg.AssetKey, str]]
    assets: list[dg.AssetKey]
    lines: list[str]

    def __bool__(self) -> bool:
        return bool(self.partitions or self.assets)

    def runs(self) -> list[tuple[list[dg.AssetKey], str | None]]:
        """(assets, partition) per run, in dependency order: the unpartitioned assets upstream of a partition
        to run, then each partition, then the other unpartitioned assets."""
        graph, upstream = defs.resolve_asset_graph(), _ancestors({key for key, _ in self.partitions})
        before = [key for key in self.assets if upstream & set(graph.get(key).execution_set_asset_keys)]
        after = [key for key in self.assets if key not in before]
        return ([(before, None)] if before else []) + [([key], partition) for key, partition in self.partitions] \
            + ([(after, None)] if after else [])


def _ancestors(keys: set[dg.AssetKey]) -> set[dg.AssetKey]:
    graph, found, todo = defs.resolve_asset_graph(), set(), list(keys)
    while todo:
        for parent in graph.get(todo.pop()).parent_keys:
            if parent not in found:
                found.add(parent)
                todo.append(parent)
    return found


def plan(instance: dg.DagsterInstance, selected: set[dg.AssetKey], everything: bool) -> Plan:
    """The materializable assets (and partitions) of `selected` to run, and why."""
    graph = defs.resolve_asset_graph()
    keys = sorted((key for key in selected if graph.get(key).is_materializable), key=lambda k: k.to_user_string())
    resolver = CachingStaleStatusResolver(instance, graph, InstanceLoadingContext(instance))
    run, partitions, lines = set(), [], []
    for key in keys:
        partitions_def = graph.get(key).partitions_def
        if partitions_def is not None:
            to_run, line = _plan_partitions(instance, resolver, key, partitions_def, everything)
            partitions += [(key, partition) for partition in to_run]
            lines.append(line)
            continue
        status = resolver.get_status(key)
        runs, reason = _decide(resolver, key, None, status, everything)
        if runs:
            run.add(key)
            lines.append(f"{key.to_user_string()}: {reason}")
        else:
            record = instance.get_latest_materialization_event(key)
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.timestamp)) if record else "?"
            lines.append(f"{key.to_user_string()}: up to date (materialized {when}; its code version and every "
                         "input's data version are unchanged since): skipped")
    # A multi-asset that cannot be subset (ingest) runs whole when one of its assets must.
    for key in list(run):
        run |= set(graph.get(key).execution_set_asset_keys) & set(keys)
    return Plan(partitions, [key for key in keys if key in run], lines)


def _decide(resolver, key, partition, status, everything) -> tuple[bool, str]:
    if everything:
        return True, f"{status.value.lower()}, run anyway (--all): the stage reuses what is unchanged"
    if status == StaleStatus.MISSING:
        return True, "never materialized: run"
    if status == StaleStatus.STALE:
        causes = "; ".join(f"{cause.asset_key.to_user_string()} {cause.reason}"
                           for cause in resolver.get_stale_root_causes(key, partition))
        return True, f"stale ({causes}): run"
    return False, "up to date: skipped"


def _plan_partitions(instance, resolver, key, partitions_def, everything) -> tuple[list[str], str]:
    """The partitions of `key` to run, and one line for them all (partitions grouped by what is decided)."""
    to_run, reasons = [], {}
    for partition in partitions_def.get_partition_keys(dynamic_partitions_store=instance):
        runs, reason = _decide(resolver, key, partition, resolver.get_status(key, partition), everything)
        reasons.setdefault(reason, []).append(partition)
        if runs:
            to_run.append(partition)
    groups = "; ".join(f"{_partition_list(names)} {reason}" for reason, names in reasons.items())
    return to_run, f"{key.to_user_string()}: {groups or 'no partitions yet: skipped'}"


def _partition_list(names: list[str]) -> str:
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return f"partition{'s' if len(names) > 1 else ''} {shown}"


def selected_keys(selection: str) -> set[dg.AssetKey]:
    """The assets `selection` names, or a one-sentence error (SystemExit) when it names none or does not parse."""
    try:
        keys = dg.AssetSelection.from_string(selection).resolve(defs.resolve_asset_graph())
    except DagsterInvalidAssetSelectionError:
        raise SystemExit(f"--select {selection!r} is not a Dagster asset selection (e.g. 'not group:linking', "
                         "'key:mentions+').") from None
    if not keys:
        raise SystemExit(f"--select {selection!r} selects no asset of the code location assets.definitions.")
    return keys


def failures(result) -> str:
    """Each failed step and the sentence it failed with (a stage's own message, not its stack)."""
    reasons = [f"{event.step_key}: {failure_sentence(event.step_failure_data)}"
               for event in result.get_step_failure_events()]
    return "; ".join(reasons) or "see the log above"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--select", default="*", help="Dagster asset selection (default: every asset)")
    parser.add_argument("--all", action="store_true", help="run every selected asset, stale or not")
    args = parser.parse_args(argv)
    selected = selected_keys(args.select)  # a bad selection fails before anything runs
    started = time.perf_counter()
    job = defs.resolve_implicit_global_asset_job_def()
    with dg.DagsterInstance.get() as instance:
        observed = job.execute_in_process(instance=instance, asset_selection=[OBSERVED], raise_on_error=False)
        if not observed.success:
            print(f"Could not observe the dataset's files: {failures(observed)}", file=sys.stderr)
            return 1
        runs = []
        # Dagster marks an asset stale when an input's data version changed, not when an input is merely
        # stale itself: what a run changes can make its downstream stale, so plan again after each wave.
        for wave in range(len(defs.resolve_asset_graph().get_all_asset_keys())):
            todo = plan(instance, selected, args.all and wave == 0)
            print("\n".join(todo.lines if wave == 0 else [line for line in todo.lines if not line.endswith("skipped")]),
                  flush=True)
            if not todo:
                break
            for keys, partition in todo.runs():
                result = job.execute_in_process(instance=instance, asset_selection=keys, partition_key=partition,
                                                raise_on_error=False)
                runs.append(result.run_id)
                if not result.success:
                    print(f"Run {result.run_id} failed after {time.perf_counter() - started:.1f} s: "
                          f"{failures(result)}", file=sys.stderr)
                    return 1
    seconds = time.perf_counter() - started
    if not runs:
        print(f"Nothing to materialize: every selected asset is up to date ({seconds:.1f} s).")
    else:
        print(f"Materialized what was stale in {len(runs)} run(s) ({', '.join(r[:8] for r in runs)}; {seconds:.1f} s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
