"""availability speed: busy spans on the per-user rows, kept by the database (issue 12)

A check asks "what of user U overlaps [start, end)?". Schedule items are reached through
``item_assignees``, which had no times, so every check walked all of the user's items.
This revision copies each item's ``start_at``/``end_at`` onto its assignee rows and marks
rows longer than a day (``long_span``) on ``item_assignees`` and ``external_busy``, with
the index ``(user_id, long_span, start_at, end_at)`` on both. A short row overlapping the
range starts at most a day before it, so the store reads two narrow index ranges per
user (short rows from ``start - 1 day``, long rows up to ``end``) instead of everything.

The copies are kept by triggers, so every write path (ORM, Core, bulk loads, other
engineers' code) keeps them right:

- inserting an assignee copies its item's times;
- moving an item (``start_at``/``end_at``) moves its assignee rows;
- inserting or moving an external busy occurrence sets its ``long_span``.

The one-day bound is :data:`calsync.availability.store.SHORT_SPAN`; changing it needs a
new revision that recomputes ``long_span``. On SQLite, a later ``batch_alter_table`` that
recreates one of these tables drops its triggers: such a revision must create them again
(``tests/test_availability_spans.py`` checks the copies at head on both engines).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 09:25:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

# julianday() counts days; the store looks a minute further back than this bound, so
# the millisecond rounding of julianday never hides a row.
_SQLITE_LONG = "(julianday({t}.end_at) - julianday({t}.start_at) > 1.0)"
_PG_LONG = "({t}.end_at - {t}.start_at > interval '1 day')"

_SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER trg_item_assignees_span AFTER INSERT ON item_assignees
    BEGIN
      UPDATE item_assignees SET
        start_at = (SELECT s.start_at FROM schedule_items s WHERE s.pk = NEW.item_pk),
        end_at = (SELECT s.end_at FROM schedule_items s WHERE s.pk = NEW.item_pk),
        long_span = (SELECT {_SQLITE_LONG.format(t='s')} FROM schedule_items s
                     WHERE s.pk = NEW.item_pk)
      WHERE item_pk = NEW.item_pk AND user_id = NEW.user_id;
    END""",
    f"""CREATE TRIGGER trg_schedule_items_span AFTER UPDATE OF start_at, end_at
    ON schedule_items
    BEGIN
      UPDATE item_assignees SET start_at = NEW.start_at, end_at = NEW.end_at,
        long_span = {_SQLITE_LONG.format(t='NEW')}
      WHERE item_pk = NEW.pk;
    END""",
    f"""CREATE TRIGGER trg_external_busy_span_insert AFTER INSERT ON external_busy
    BEGIN
      UPDATE external_busy SET long_span = {_SQLITE_LONG.format(t='NEW')}
      WHERE id = NEW.id;
    END""",
    f"""CREATE TRIGGER trg_external_busy_span_update AFTER UPDATE OF start_at, end_at
    ON external_busy
    BEGIN
      UPDATE external_busy SET long_span = {_SQLITE_LONG.format(t='NEW')}
      WHERE id = NEW.id;
    END""",
]

_PG_TRIGGERS = [
    f"""CREATE FUNCTION calsync_item_assignee_span() RETURNS trigger AS $$
    BEGIN
      SELECT s.start_at, s.end_at, {_PG_LONG.format(t='s')}
        INTO NEW.start_at, NEW.end_at, NEW.long_span
        FROM schedule_items s WHERE s.pk = NEW.item_pk;
      -- no item: leave the foreign key to say so, not the NOT NULL constraint
      NEW.long_span := coalesce(NEW.long_span, false);
      RETURN NEW;
    END $$ LANGUAGE plpgsql""",
    """CREATE TRIGGER trg_item_assignees_span BEFORE INSERT OR UPDATE OF item_pk
    ON item_assignees FOR EACH ROW EXECUTE FUNCTION calsync_item_assignee_span()""",
    f"""CREATE FUNCTION calsync_schedule_item_span() RETURNS trigger AS $$
    BEGIN
      UPDATE item_assignees SET start_at = NEW.start_at, end_at = NEW.end_at,
        long_span = {_PG_LONG.format(t='NEW')}
      WHERE item_pk = NEW.pk;
      RETURN NULL;
    END $$ LANGUAGE plpgsql""",
    """CREATE TRIGGER trg_schedule_items_span AFTER UPDATE OF start_at, end_at
    ON schedule_items FOR EACH ROW
    WHEN (OLD.start_at IS DISTINCT FROM NEW.start_at OR OLD.end_at IS DISTINCT FROM NEW.end_at)
    EXECUTE FUNCTION calsync_schedule_item_span()""",
    f"""CREATE FUNCTION calsync_external_busy_span() RETURNS trigger AS $$
    BEGIN
      NEW.long_span := {_PG_LONG.format(t='NEW')};
      RETURN NEW;
    END $$ LANGUAGE plpgsql""",
    """CREATE TRIGGER trg_external_busy_span BEFORE INSERT OR UPDATE OF start_at, end_at
    ON external_busy FOR EACH ROW EXECUTE FUNCTION calsync_external_busy_span()""",
]


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    with op.batch_alter_table("item_assignees") as batch:
        batch.add_column(sa.Column("start_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("end_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("long_span", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
    with op.batch_alter_table("external_busy") as batch:
        batch.add_column(sa.Column("long_span", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
    if _sqlite():
        op.execute("""UPDATE item_assignees SET
            start_at = (SELECT s.start_at FROM schedule_items s WHERE s.pk = item_pk),
            end_at = (SELECT s.end_at FROM schedule_items s WHERE s.pk = item_pk)""")
        op.execute(f"UPDATE item_assignees SET long_span = "
                   f"{_SQLITE_LONG.format(t='item_assignees')}")
        op.execute(f"UPDATE external_busy SET long_span = "
                   f"{_SQLITE_LONG.format(t='external_busy')}")
        triggers = _SQLITE_TRIGGERS
    else:
        op.execute(f"""UPDATE item_assignees a SET start_at = s.start_at, end_at = s.end_at,
            long_span = {_PG_LONG.format(t='s')} FROM schedule_items s WHERE s.pk = a.item_pk""")
        op.execute(f"UPDATE external_busy SET long_span = "
                   f"{_PG_LONG.format(t='external_busy')}")
        triggers = _PG_TRIGGERS
    for statement in triggers:
        op.execute(statement)
    op.create_index("ix_item_assignees_span", "item_assignees",
                    ["user_id", "long_span", "start_at", "end_at"])
    op.create_index("ix_external_busy_span", "external_busy",
                    ["user_id", "long_span", "start_at", "end_at"])


def downgrade() -> None:
    op.drop_index("ix_external_busy_span", table_name="external_busy")
    op.drop_index("ix_item_assignees_span", table_name="item_assignees")
    for name, table in (("trg_item_assignees_span", "item_assignees"),
                        ("trg_schedule_items_span", "schedule_items"),
                        ("trg_external_busy_span_insert", "external_busy"),
                        ("trg_external_busy_span_update", "external_busy"),
                        ("trg_external_busy_span", "external_busy")):
        if _sqlite():
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
    if not _sqlite():
        for fn in ("calsync_item_assignee_span", "calsync_schedule_item_span",
                   "calsync_external_busy_span"):
            op.execute(f"DROP FUNCTION IF EXISTS {fn}()")
    with op.batch_alter_table("external_busy") as batch:
        batch.drop_column("long_span")
    with op.batch_alter_table("item_assignees") as batch:
        batch.drop_column("long_span")
        batch.drop_column("end_at")
        batch.drop_column("start_at")
