"""The lake writes atomically: an interrupted write leaves the previous output intact."""

import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

from pipeline.atomic import atomic_path
from pipeline.lake import Lake


def numbers(n: int) -> pa.Table:
    return pa.table({"x": list(range(n))})


def test_table_round_trip_keeps_the_fingerprint(lake):
    lake.write_table("numbers", numbers(3), fingerprint="abc", extra={"rows": 3})
    assert lake.read_table("numbers").column("x").to_pylist() == [0, 1, 2]
    assert lake.table_fingerprint("numbers") == "abc"
    assert lake.table_extra("numbers") == {"rows": 3}
    assert lake.tables_up_to_date(["numbers"], "abc") and not lake.tables_up_to_date(["numbers"], "other")


def test_an_exception_midway_keeps_the_previous_table(lake):
    lake.write_table("numbers", numbers(3), fingerprint="old")
    target = lake.table_path("numbers")

    with pytest.raises(RuntimeError):
        with atomic_path(target) as temp:
            temp.write_bytes(b"half a parquet file")
            raise RuntimeError("crash while writing")

    assert lake.read_table("numbers").num_rows == 3
    assert lake.table_fingerprint("numbers") == "old"
    assert [p.name for p in target.parent.iterdir()] == ["numbers.parquet"]


def test_a_process_killed_midway_leaves_the_previous_table(lake):
    lake.write_table("numbers", numbers(3), fingerprint="old")
    target = lake.table_path("numbers")
    writer = textwrap.dedent(
        f"""
        import os, signal
        import pyarrow as pa, pyarrow.parquet as pq
        from pipeline.atomic import atomic_path
        table = pa.table({{"x": list(range(100_000))}})
        with atomic_path({str(target)!r}) as temp:
            with pq.ParquetWriter(temp, table.schema) as writer:
                writer.write_table(table.slice(0, 50_000))
                os.kill(os.getpid(), signal.SIGKILL)  # dies with a half-written file
        """
    )
    result = subprocess.run([sys.executable, "-c", writer], capture_output=True)
    assert result.returncode == -9

    leftovers = [p for p in target.parent.iterdir() if p.name != "numbers.parquet"]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".numbers.parquet.tmp-")
    assert lake.read_table("numbers").num_rows == 3  # readers never see the half-written file

    lake.write_table("numbers", numbers(5), fingerprint="new")  # the next write cleans up
    assert [p.name for p in target.parent.iterdir()] == ["numbers.parquet"]
    assert lake.read_table("numbers").num_rows == 5


def test_reading_a_table_that_was_never_written_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="has not been materialized yet"):
        Lake(tmp_path).read_table("mentions")


def test_root_comes_from_mel_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEL_HOME", str(tmp_path / "elsewhere"))
    assert Lake().root == tmp_path / "elsewhere"


def test_two_processes_share_a_duckdb_cache_without_a_lock_error(tmp_path):
    """Two runs at once (two inbox partitions, say) write the same LLM choice cache: they take turns."""
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "llm_choices.duckdb"
    writer = textwrap.dedent(f"""
        import sys
        from pipeline.describe.cache import ChoiceCache
        cache = ChoiceCache({str(path)!r})
        for batch in range(40):
            cache.put_many([dict(key=f"{{sys.argv[1]}}-{{batch}}", backend="b", model="m", chosen_index=0,
                                 chosen_qid=None, probabilities=[1.0], logprob_sums=[0.0], baseline_sums=[0.0],
                                 token_counts=[1], prompt="p")])
            assert cache.get_many([f"{{sys.argv[1]}}-{{batch}}"])
    """)
    runs = [subprocess.Popen([sys.executable, "-c", writer, name], stderr=subprocess.PIPE, text=True)
            for name in ("first", "second")]
    errors = [run.communicate(timeout=120)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors

    from pipeline.describe.cache import ChoiceCache

    assert ChoiceCache(path).count() == 80
