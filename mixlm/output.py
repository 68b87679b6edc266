"""Rendering results for people (tables) and scripts (JSON/YAML with stable keys)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import click
import yaml

OUTPUT_FORMATS = ("table", "json", "yaml")


def output_option(default: str = "table"):
    return click.option("--output", "-o", type=click.Choice(OUTPUT_FORMATS), default=default,
                        show_default=True, help="table for people; json or yaml for scripts")


def flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested mappings as ``a.b`` rows; lists joined by commas; None as '-'."""
    rows: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows.extend(flatten(value, f"{name}."))
        elif isinstance(value, Mapping):
            rows.append((name, "-"))
        elif isinstance(value, (list, tuple)):
            rows.append((name, ", ".join(str(v) for v in value) if value else "-"))
        else:
            rows.append((name, "-" if value is None else str(value)))
    return rows


def key_value_table(data: Mapping[str, Any]) -> str:
    rows = flatten(data)
    width = max((len(key) for key, _ in rows), default=0)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def columns_table(rows: Sequence[Mapping[str, Any]], columns: Iterable[str]) -> str:
    columns = list(columns)
    cells = [[("-" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def render(data: Any, fmt: str, table: str) -> str:
    """``table`` is the people's rendering, already built; json/yaml render ``data``."""
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False)
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip()
    return table


def echo_err(line: str) -> None:
    """A progress or status line on stderr: stdout stays for the command's result."""
    click.echo(line, err=True)
