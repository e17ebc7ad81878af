"""Benchmark: index synthetic WikiData dumps of growing size; lines/s flat, peak RSS bounded.

    python bench/wikidata_dump_index.py --lines 250000 1000000 4000000 --compare-full-parse 250000
    python bench/wikidata_dump_index.py --lines 250000 4000000 --memory-limit 128MB

Results and the machine they came from: bench/wikidata.md.

Each dump is written once (official layout, gzip) and indexed in a fresh subprocess
through the real code path (`DumpIndex.index`), which reports its own peak RSS
(`ru_maxrss`), so builds do not share memory figures. After each build, 2,000 search
strings (half present, half absent) are looked up in one batch, as `search_many` does.
`--compare-full-parse N` first times the per-line parse (whole line vs up to `"claims"`)
on a short and a long line, then also indexes an N-line dump with the whole-line parse,
in the same run. `--memory-limit` sets the DuckDB memory limit of the build.

Synthetic lines imitate the real dump's shape: labels, descriptions and aliases in a few
languages, then claims and sitelinks that make up most of the bytes (about 1.4 KB per
line; real lines average about 13 KB, which favours the partial parse more). About 1% of
the lines are properties, lexemes or cut-off (corrupt) lines, a third each.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import markdown_table, write_json  # noqa: E402

SYLLABLES = ["ka", "lo", "mi", "ra", "ten", "vor", "sel", "dan", "qui", "bre", "ost", "lin", "mar", "zu", "hel"]
LANGUAGES = ["en", "de", "fr", "es"]


def name(rng: random.Random) -> str:
    return " ".join("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).title()
                    for _ in range(rng.randint(1, 2)))


def claims_pool(rng: random.Random, size: int = 500) -> list[str]:
    """Serialized `"claims":...,"sitelinks":...` tails, drawn per line: writing dumps of
    millions of lines stays fast while each line still carries realistic bulk."""
    pool = []
    for _ in range(size):
        claims = {f"P{p}": [{"mainsnak": {"snaktype": "value", "property": f"P{p}",
                                          "hash": f"{rng.getrandbits(160):040x}",
                                          "datavalue": {"type": "wikibase-entityid", "value": {
                                              "entity-type": "item", "id": f"Q{rng.randint(1, 10**8)}"}},
                                          "datatype": "wikibase-item"},
                             "type": "statement", "id": f"Q1${rng.getrandbits(64):016x}", "rank": "normal"}]
                  for p in rng.sample(range(17, 3000), 3)}
        sitelinks = {"enwiki": {"site": "enwiki", "title": name(rng), "badges": []}}
        pool.append(f'"claims":{json.dumps(claims, separators=(",", ":"))},'
                    f'"sitelinks":{json.dumps(sitelinks, separators=(",", ":"))}')
    return pool


def item_line(rng: random.Random, number: int, tails: list[str], names: list[str]) -> str:
    label = rng.choice(names)
    labels = {code: {"language": code, "value": label if code != "de" else label + "e"} for code in LANGUAGES}
    descriptions = {code: {"language": code, "value": f"{code} description of item {number}"}
                    for code in LANGUAGES[: rng.randrange(5)]}
    aliases = {"en": [{"language": "en", "value": rng.choice(names)} for _ in range(rng.randrange(4))]}
    terms = json.dumps({"type": "item", "id": f"Q{number}", "labels": labels, "descriptions": descriptions,
                        "aliases": aliases}, separators=(",", ":"))
    return f'{terms[:-1]},{rng.choice(tails)},"lastrevid":{rng.randint(1, 10**9)}}}'


def other_line(rng: random.Random, number: int) -> str:
    if number % 3 == 0:
        return f'{{"type":"item","id":"Q{number}","labels":{{"en":'  # corrupt: cut off
    if number % 2:
        return json.dumps({"type": "property", "id": f"P{number}", "datatype": "string",
                           "labels": {"en": {"language": "en", "value": name(rng)}}, "claims": {}})
    return json.dumps({"type": "lexeme", "id": f"L{number}", "lemmas": {"en": {"language": "en", "value": name(rng)}},
                       "claims": {}, "forms": [], "senses": []})


def write_dump(path: Path, lines: int, seed: int = 0) -> None:
    if path.is_file():
        return
    rng = random.Random(seed)
    tails = claims_pool(rng)
    names = [name(rng) for _ in range(50_000)]  # namesakes galore, as in WikiData
    temp = path.with_suffix(".partial")
    with gzip.open(temp, "wt", compresslevel=1) as out:
        out.write("[\n")
        for number in range(1, lines + 1):
            odd = rng.random()
            line = other_line(rng, number) if odd < 0.0003 or odd > 0.99 else item_line(rng, number, tails, names)
            out.write(line + (",\n" if number < lines else "\n"))
        out.write("]\n")
    os.replace(temp, path)


def parse_comparison() -> list[list[str]]:
    """Whole-line JSON parse vs parsing up to `"claims"`, on a short line and on a line with
    the ~10 KB of statements that real dump lines average (1.4 TB / 110 M entities ≈ 13 KB)."""
    import timeit

    from pipeline.wikidata.dump_read import parse_entity

    rng = random.Random(0)
    tails = claims_pool(rng, 50)
    short = item_line(rng, 5, tails, [name(rng) for _ in range(10)]).encode()
    statements = ",".join(t.split(',"sitelinks"')[0][len('"claims":{'):-1] for t in tails[:10])
    long = short.replace(b'"claims":{', b'"claims":{' + statements.encode() + b",", 1)
    lines = []
    for line in (short, long):
        whole = min(timeit.repeat(lambda line=line: json.loads(line), number=2000, repeat=5)) / 2000
        part = min(timeit.repeat(lambda line=line: parse_entity(line), number=2000, repeat=5)) / 2000
        lines.append([f"{len(line) / 1024:.1f} KB", f"{whole * 1e6:.0f}", f"{part * 1e6:.0f}", f"{whole / part:.1f}x"])
    return lines


def index_in_subprocess(dump: Path, workdir: Path, full_parse: bool, memory_limit: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(dump), str(workdir), "--memory-limit", memory_limit]
                         + (["--full-parse"] if full_parse else []),
                         cwd=REPO, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(dump: Path, workdir: Path, full_parse: bool, memory_limit: str) -> None:
    """Runs in a fresh process: build the index, search it, print figures as one JSON line."""
    import pipeline.wikidata.dump_build as build_module
    from pipeline.wikidata import DumpIndex, LookupCache

    if full_parse:
        build_module.parse_entity = json.loads  # the name the build's loop looks up
    build_module.INDEX_MEMORY_LIMIT = memory_limit
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tag = ("full" if full_parse else "partial") + f"-{memory_limit}"
    cache_path, index_dir = workdir / f"cache-{dump.stem}-{tag}.duckdb", workdir / f"index-{dump.stem}-{tag}"
    shutil.rmtree(index_dir, ignore_errors=True)  # an earlier run's index would be opened, not built and timed
    cache_path.unlink(missing_ok=True)
    with LookupCache(cache_path) as cache:
        index = DumpIndex(dump, cache, index_dir)
        started = time.perf_counter()
        con = index.index("en")
        build_s = time.perf_counter() - started
        rss_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        stats = index.read_stats["en"]
        rng = random.Random(1)
        present = [row[0] for row in con.execute("SELECT term FROM terms USING SAMPLE 1000 ROWS").fetchall()]
        absent = [name(rng) + " zz" for _ in range(1000)]
        started = time.perf_counter()
        found = index._lookup(present + absent, "en", 10)
        search_s = time.perf_counter() - started
        index.close()
    print(json.dumps({
        "lines": stats.lines_read, "items": stats.items_indexed, "terms": stats.terms_indexed,
        "skipped": dict(stats.skipped), "build_s": build_s, "lines_per_s": stats.lines_read / build_s,
        "peak_rss_build_mb": rss_build / 1024,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_imports_mb": rss_before / 1024, "search_2000_s": search_s,
        "found": sum(bool(o.candidates) for o in found.values()),
        "index_mb": index.index_path("en").stat().st_size / 2**20, "dump_mb": dump.stat().st_size / 2**20,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, nargs="+", default=[250_000, 1_000_000, 4_000_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/wikidata-dump-bench"))
    parser.add_argument("--compare-full-parse", type=int, default=0, metavar="N")
    parser.add_argument("--memory-limit", default="512MB", help="DuckDB memory limit of the index build")
    parser.add_argument("--json", help="also write the results here (bench/report.py's format)")
    parser.add_argument("--child", nargs=2, metavar=("DUMP", "WORKDIR"), help=argparse.SUPPRESS)
    parser.add_argument("--full-parse", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), args.full_parse, args.memory_limit)
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    setup = (f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
             f"load average {os.getloadavg()[0]:.1f}, DuckDB memory limit {args.memory_limit}")
    print(setup)
    tables = []
    if args.compare_full_parse:
        tables.append({"title": "Parsing one line", "rows": parse_comparison(),
                       "columns": ["line", "whole-line parse µs", "parse up to claims µs", "speed-up"]})
        print(markdown_table(tables[-1]["columns"], tables[-1]["rows"]))
        print(flush=True)
    runs = [(lines, False) for lines in args.lines]
    if args.compare_full_parse:
        runs += [(args.compare_full_parse, True)]
    columns = ["lines", "parse", "dump (gz) MB", "items", "terms", "build s", "lines/s", "RSS after imports MB",
               "peak RSS build MB", "index MB", "search 2,000 strings s", "peak RSS with search MB", "load avg"]
    tables.append({"title": "Index build per dump size", "columns": columns, "rows": []})
    print(markdown_table(columns, []))  # the header now, each row as its dump is indexed
    for lines, full_parse in runs:
        dump = args.workdir / f"dump-{lines}.json.gz"
        write_dump(dump, lines)
        r = index_in_subprocess(dump, args.workdir, full_parse, args.memory_limit)
        row = [f"{r['lines']:,}", "whole line" if full_parse else "up to claims", f"{r['dump_mb']:.0f}",
               f"{r['items']:,}", f"{r['terms']:,}", f"{r['build_s']:.1f}", f"{r['lines_per_s']:,.0f}",
               f"{r['rss_after_imports_mb']:.0f}", f"{r['peak_rss_build_mb']:.0f}", f"{r['index_mb']:.0f}",
               f"{r['search_2000_s']:.2f}", f"{r['peak_rss_mb']:.0f}", f"{os.getloadavg()[0]:.1f}"]
        tables[-1]["rows"].append(row)
        print("| " + " | ".join(row) + " |", flush=True)
    if args.json:
        write_json(args.json, "WikiData dump indexing", setup, tables,
                   ["each build runs in a fresh process through DumpIndex.index; peak RSS is its ru_maxrss",
                    "synthetic lines are shaped like the real dump's but shorter; real ones favour the partial "
                    "parse more"])




if __name__ == "__main__":
    main()
