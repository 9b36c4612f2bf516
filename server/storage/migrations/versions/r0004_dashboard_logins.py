"""Dashboard logins: TOTP second factor (secret, pending enrolment, last accepted step),
the second step of a login, and one-time recovery codes.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("operators", sa.Column("totp_secret", sa.Text))
    op.add_column("operators", sa.Column("totp_pending", sa.Text))
    op.add_column("operators", sa.Column("totp_enabled_at", sa.Text))
    op.add_column("operators", sa.Column("totp_last_step", sa.BigInteger))
    op.create_table(
        "login_challenges",
        sa.Column("token_sha256", sa.Text, primary_key=True),
        sa.Column("operator", sa.Text, sa.ForeignKey("operators.name"), nullable=False),
        sa.Column("address", sa.Text, nullable=False),
        sa.Column("purpose", sa.Text, nullable=False),
        sa.Column("expires_at", sa.Text, nullable=False),
        sa.Column("tries", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_table(
        "recovery_codes",
        sa.Column("operator", sa.Text, sa.ForeignKey("operators.name"), nullable=False),
        sa.Column("code_sha256", sa.Text, nullable=False),
        sa.Column("used_at", sa.Text),
        sa.PrimaryKeyConstraint("operator", "code_sha256"),
    )
