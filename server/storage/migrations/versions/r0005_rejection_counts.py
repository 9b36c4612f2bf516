"""Refused messages counted per day and topic, with a bounded sample of them kept.

Before, every refused message (and up to 10 events of each refused batch) was a row of
`rejected_messages`: 10,000 malformed messages were 340,000 rows. Now `rejection_counts`
counts every one per UTC day and topic and `rejected_messages` keeps a sample
(server/storage/events.py). The rows already stored are counted, each as its own sample.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rejection_counts",
        sa.Column("day", sa.Text, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("refused", sa.BigInteger, nullable=False),
        sa.Column("sampled", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("day", "topic"),
    )
    op.execute(
        "INSERT INTO rejection_counts (day, topic, refused, sampled)"
        " SELECT substr(at, 1, 10), topic, count(*), count(*) FROM rejected_messages"
        " GROUP BY substr(at, 1, 10), topic"
    )
