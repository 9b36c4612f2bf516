"""Trust roots: the versioned, signed sets of the site's keys that gates trust
(protocol.roots). A site migrated here has no root yet: the first publication makes root 1
of its active keys, signed by the oldest (server/site.py).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "roots",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
    )
