"""The results file a bench script writes with `--json PATH`; `python -m bench` renders its report from these."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def write_json(path, title: str, setup: str, tables: list[dict], notes: Sequence[str] = ()) -> None:
    """Write ``{"title", "setup", "tables": [{"title", "columns", "rows"}], "notes"}`` to ``path``.

    ``setup`` is one line (sizes, dims, threads, device, load average); cells are str, int or float.
    """
    for table in tables:  # a short row would shift the report's columns without an error
        widths = {len(row) for row in table["rows"]} - {len(table["columns"])}
        if widths:
            raise ValueError(f"table {table['title']!r}: rows of {sorted(widths)} cells, "
                             f"{len(table['columns'])} columns")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tables = [{"title": t["title"], "columns": list(t["columns"]), "rows": [list(r) for r in t["rows"]]}
              for t in tables]
    results = {"title": title, "setup": setup, "tables": tables, "notes": list(notes)}
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")


def markdown_table(columns, rows) -> str:
    """A Markdown table; None cells are left empty."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("" if cell is None else str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
