"""Small pieces of SQL text shared by the statement builders."""

from __future__ import annotations

from collections.abc import Sequence


def strip(sql: str) -> str:
    """A user's query, ready to be a subquery: no trailing semicolon."""
    return sql.strip().rstrip(";").strip()


def select_from(table: str, joins: Sequence[str], conditions: Sequence[str]) -> str:
    """``FROM table joins... WHERE (c1) AND (c2)...``."""
    parts = [f"FROM {table}", *joins]
    if conditions:
        parts.append("WHERE " + " AND ".join(f"({c})" for c in conditions))
    return " ".join(parts)


def group_by(count: int) -> str:
    return "GROUP BY " + ", ".join(str(i) for i in range(1, count + 1))
