"""Case work: recorded outcomes, case notes, and what a promise was measured against.

* ``outcomes``: what came of a contact (agents, dialer and call-centre files); one row per
  (account, time, channel, target, result), so importing the same file twice adds nothing;
* ``notes``: free-text case notes;
* ``promises.paid_before``: the account's ``amount_paid`` when the promise was made (a
  promise is kept once the account was paid its amount more than that).

Self-contained: it only adds, so it can follow any revision that has 0001's tables.

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "outcomes",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(), sa.ForeignKey("accounts.account_id"), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("result", sa.String(), nullable=False),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("number", sa.String(), nullable=True),
        sa.Column("contact_id", sa.String(), nullable=True),
        sa.Column("rule", sa.String(), nullable=True),
        sa.Column("promise_amount", sa.BigInteger(), nullable=True),
        sa.Column("promise_date", sa.Date(), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("policy_version", sa.String(), nullable=True),
        sa.Column("recorded_at", _TS, nullable=False),
    )
    op.create_index(
        "uq_outcomes_event",
        "outcomes",
        ["account_id", "at", "channel", "target", "result"],
        unique=True,
    )
    op.create_index("ix_outcomes_result", "outcomes", ["result"])
    op.create_index("ix_outcomes_at", "outcomes", ["at"])
    op.create_table(
        "notes",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(), sa.ForeignKey("accounts.account_id"), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("author", sa.String(), nullable=False),
    )
    op.create_index("ix_notes_account_at", "notes", ["account_id", "at"])
    with op.batch_alter_table("promises") as batch:
        batch.add_column(
            sa.Column("paid_before", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("promises") as batch:
        batch.drop_column("paid_before")
    op.drop_table("notes")
    op.drop_table("outcomes")
