"""Initial schema: accounts, contacts, promises, account_flags, audit_log.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Money columns are BIGINT ten-thousandths; timestamps are timezone-aware (UTC).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _created_updated() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("account_id", sa.String(), primary_key=True),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("phone", sa.String(), nullable=True),
        sa.Column("email", sa.String(), nullable=True),
        sa.Column("timezones", sa.String(), nullable=False),
        sa.Column("country", sa.String(), nullable=False),
        sa.Column("language", sa.String(), nullable=False),
        sa.Column("product", sa.String(), nullable=False),
        sa.Column("due_date", sa.Date(), nullable=False),
        sa.Column("amount_due", sa.BigInteger(), nullable=False),
        sa.Column("amount_paid", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("flags", sa.String(), nullable=False),
        sa.Column("emergency_contacts", sa.String(), nullable=False),
        sa.Column("phone_valid", sa.Boolean(), server_default=sa.true(), nullable=False),
        *_created_updated(),
        sa.CheckConstraint(
            "status IN ('active', 'closed', 'handed_over')", name="ck_accounts_status"
        ),
    )
    op.create_index("ix_accounts_status_due_date", "accounts", ["status", "due_date"])

    op.create_table(
        "contacts",
        sa.Column("contact_id", sa.String(), primary_key=True),
        sa.Column("account_id", sa.String(), sa.ForeignKey("accounts.account_id"), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("rule", sa.String(), nullable=False),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("due_date", sa.Date(), nullable=True),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("window_start", _TS, nullable=False),
        sa.Column("window_end", _TS, nullable=False),
        sa.Column("template", sa.String(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("sla_risk", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("outcome", sa.String(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_attempt_at", _TS, nullable=True),
        sa.Column("lease_owner", sa.String(), nullable=True),
        sa.Column("lease_until", _TS, nullable=True),
        sa.Column("performed_at", _TS, nullable=True),
        sa.Column("policy_version", sa.String(), nullable=True),
        *_created_updated(),
        sa.CheckConstraint(
            "status IN ('planned', 'claimed', 'sent', 'skipped', 'missed', 'failed')",
            name="ck_contacts_status",
        ),
    )
    op.create_index("ix_contacts_account_performed", "contacts", ["account_id", "performed_at"])
    op.create_index("ix_contacts_status_next_attempt", "contacts", ["status", "next_attempt_at"])
    op.create_index("ix_contacts_performed_at", "contacts", ["performed_at"])

    op.create_table(
        "promises",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(), sa.ForeignKey("accounts.account_id"), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("promised_date", sa.Date(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("closed_at", _TS, nullable=True),
        sa.CheckConstraint("status IN ('pending', 'kept', 'broken')", name="ck_promises_status"),
    )
    op.create_index("ix_promises_status_account", "promises", ["status", "account_id"])

    op.create_table(
        "account_flags",
        sa.Column(
            "account_id",
            sa.String(),
            sa.ForeignKey("accounts.account_id"),
            primary_key=True,
        ),
        sa.Column("flag", sa.String(), primary_key=True),
        sa.Column("since", _TS, primary_key=True),
        sa.Column("until", _TS, nullable=True),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("note", sa.String(), nullable=False),
    )

    op.create_table(
        "audit_log",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("at", _TS, nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("account_id", sa.String(), nullable=True),
        sa.Column("contact_id", sa.String(), nullable=True),
        sa.Column("rule", sa.String(), nullable=True),
        sa.Column("channel", sa.String(), nullable=True),
        sa.Column("policy_version", sa.String(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
    )
    op.create_index("ix_audit_log_account_at", "audit_log", ["account_id", "at"])
    op.create_index("ix_audit_log_at", "audit_log", ["at"])


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("account_flags")
    op.drop_table("promises")
    op.drop_table("contacts")
    op.drop_table("accounts")
