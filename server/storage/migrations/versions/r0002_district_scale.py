"""District scale: event instants as integers (indexed ranges), the event's role and a
conflict's epoch as columns (no JSON functions in queries), the conflict replay's state,
and the schedule of jobs that several collectors run once.

Revision ID: 0002
Revises: 0001
"""

import json

import sqlalchemy as sa
from alembic import op

from server.storage.times import instant_us

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

CHUNK = 5000


def upgrade() -> None:
    bind = op.get_bind()
    op.add_column("events", sa.Column("at_us", sa.BigInteger, nullable=False, server_default="0"))
    op.add_column("events", sa.Column("role", sa.Text))
    op.add_column("conflicts", sa.Column("epoch", sa.Text))
    _backfill_events(bind)
    _backfill_conflicts(bind)
    for name in ("events_at", "events_household", "events_pass"):
        op.drop_index(name, table_name="events")
    op.create_index("events_at_us", "events", ["at_us"])
    op.create_index("events_household_at_us", "events", ["household", "at_us"])
    op.create_index("events_pass_at_us", "events", ["pass_id", "at_us"])
    op.create_index("events_kind_at_us", "events", ["kind", "at_us"])
    op.create_table(
        "household_days",
        sa.Column("household", sa.Text, nullable=False),
        sa.Column("period_start_us", sa.BigInteger, nullable=False),
        sa.Column("last_at_us", sa.BigInteger, nullable=False),
        sa.Column("last_gate", sa.Text, nullable=False),
        sa.Column("last_seq", sa.Integer, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("household", "period_start_us"),
    )
    op.create_table(
        "job_runs",
        sa.Column("job", sa.Text, primary_key=True),
        sa.Column("due_us", sa.BigInteger, nullable=False),
        sa.Column("holder", sa.Text),
        sa.Column("ran_us", sa.BigInteger),
    )


def _backfill_events(bind: sa.Connection) -> None:
    """at_us and role of every stored event, from its `at` text and its body, in chunks."""
    last: tuple[str, str, int] = ("", "", -1)
    update = sa.text(
        "UPDATE events SET at_us = :at_us, role = :role"
        " WHERE gate = :gate AND epoch = :epoch AND seq = :seq"
    )
    while True:
        rows = bind.execute(
            sa.text(
                "SELECT gate, epoch, seq, at, body FROM events"
                " WHERE (gate, epoch, seq) > (:g, :e, :s) ORDER BY gate, epoch, seq LIMIT :n"
            ),
            {"g": last[0], "e": last[1], "s": last[2], "n": CHUNK},
        ).all()
        if not rows:
            return
        bind.execute(
            update,
            [
                {"gate": g, "epoch": e, "seq": s, "at_us": instant_us(at), "role": _role(body)}
                for g, e, s, at, body in rows
            ],
        )
        last = (rows[-1][0], rows[-1][1], rows[-1][2])


def _backfill_conflicts(bind: sa.Connection) -> None:
    rows = bind.execute(sa.text("SELECT id, body FROM conflicts WHERE body IS NOT NULL")).all()
    params = [{"id": i, "epoch": _field(body, "epoch")} for i, body in rows]
    if params:
        bind.execute(sa.text("UPDATE conflicts SET epoch = :epoch WHERE id = :id"), params)


def _role(body: str) -> str | None:
    return _field(body, "role")


def _field(body: str, name: str) -> str | None:
    try:
        value = json.loads(body).get(name)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None
