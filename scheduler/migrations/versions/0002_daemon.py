"""The daemon's bookkeeping: provider references and last errors on contacts, and the
daemon_state table (last tick of each kind, how far the plan has been materialised).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("contacts") as batch:
        batch.add_column(sa.Column("provider_ref", sa.String(), nullable=True))
        batch.add_column(sa.Column("last_error", sa.String(), nullable=True))
    op.create_index("ix_contacts_status_window_end", "contacts", ["status", "window_end"])
    op.create_table(
        "daemon_state",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("value", sa.String(), nullable=False),
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("daemon_state")
    op.drop_index("ix_contacts_status_window_end", table_name="contacts")
    with op.batch_alter_table("contacts") as batch:
        batch.drop_column("last_error")
        batch.drop_column("provider_ref")
