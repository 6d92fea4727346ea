"""How every diagnostic prints rows: a readable table (tabulate) by default, or JSON, or CSV."""

from __future__ import annotations

import csv
import datetime
import io
import json
from typing import Iterable

from tabulate import tabulate

FORMATS = ("table", "json", "csv")


def emit(rows: list[dict], output_format: str, columns: Iterable[str] | None = None) -> str:
    """Render rows for printing; JSON keeps nested values, table and CSV flatten them."""
    if output_format == "json":
        return json.dumps(rows, indent=1, default=str)
    columns = list(columns or (rows[0].keys() if rows else []))
    if output_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([flat(row.get(column)) for column in columns])
        return buffer.getvalue().rstrip("\n")
    if not rows:
        return "(nothing to show)"
    return tabulate([[flat(row.get(column)) for column in columns] for row in rows], headers=columns)


def flat(value):
    """A nested value as compact JSON, for table cells and CSV fields."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), default=str)
    return value


def short(value, width: int = 60) -> str:
    """A value cut to ``width`` characters for a table cell."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if isinstance(value, float):
        text = "%.6g" % value
    return text if len(text) <= width else text[: width - 3] + "..."


def when(epoch: float | None) -> str | None:
    """Epoch seconds as a UTC time people read (ISO 8601, to the second)."""
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)
