"""Sequence numbers and pass ids as 64-bit integers on PostgreSQL.

The protocol allowed seq up to 2^63 - 1 when this was written (protocol.events.MAX_SEQ is 2^53
since) and pass ids up to 2^32 - 1 (MAX_PASS_ID); PostgreSQL's INTEGER holds 2^31 - 1, so such
an event failed its insert and its gate was never acknowledged. SQLite's INTEGER is already
64-bit: nothing to do there.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

WIDENED = {
    "events": ("seq", "pass_id"),
    "event_aliases": ("seq",),
    "conflicts": ("seq",),
    "gates": ("contiguous_seq",),
    "household_days": ("last_seq",),
    "passes": ("pass_id",),
    "alerts": ("pass_id",),
    "visitors": ("pass_id",),
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in WIDENED.items():
        for column in columns:
            op.alter_column(table, column, type_=sa.BigInteger, existing_type=sa.Integer)
