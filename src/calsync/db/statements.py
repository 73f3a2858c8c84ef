"""Statements that hot paths run for every row they touch, built once."""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import Table, bindparam, update


@functools.lru_cache(maxsize=128)
def update_by_id(table: Table, columns: tuple[str, ...]) -> Any:
    """``UPDATE table SET column = :column, … WHERE id = :b_id`` for ``columns`` (sorted by
    the caller, so one set of columns is one statement): a sync's closing writes change a
    few columns of one row, and building the statement and its cache key each time cost
    more than running it."""
    return update(table).where(table.c.id == bindparam("b_id")) \
        .values({name: bindparam(name) for name in columns})
