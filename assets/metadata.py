"""Turn stored tables and stage statistics into metadata that reads well in the UI."""


import dagster as dg
import pyarrow as pa

from pipeline.lake import StoredTable


def _cell(value, width: int = 60) -> str:
    text = "" if value is None else str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "_(no rows)_"
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def preview(rows: list[dict], columns: list[str] | None = None) -> dg.MetadataValue:
    return dg.MetadataValue.md(markdown_table(rows, columns))


def column_schema(schema: pa.Schema) -> dg.TableSchema:
    """The table's columns for the UI, with the description a field carries in its metadata, if any."""
    return dg.TableSchema(columns=[
        dg.TableColumn(f.name, str(f.type), description=(f.metadata or {}).get(b"description", b"").decode() or None)
        for f in schema])


def table_metadata(table: StoredTable, preview_columns: list[str] | None = None) -> dict:
    """Row count, schema, location and a preview: what every table asset shows."""
    return {
        "dagster/row_count": table.num_rows,
        "dagster/column_schema": column_schema(table.schema),
        "path": dg.MetadataValue.path(str(table.path)),
        "preview": preview(table.head, preview_columns),
    }
