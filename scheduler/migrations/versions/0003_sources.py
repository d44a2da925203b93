"""Account sources: source_runs (one row per run of a [[sources]] entry) and source_state
(each source's watermark and the drop-folder files it is watching settle).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "source_runs",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("started", _TS, nullable=False),
        sa.Column("finished", _TS, nullable=True),
        sa.Column("rows_read", sa.Integer(), nullable=False),
        sa.Column("upserted", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("cancelled", sa.Integer(), nullable=False),
        sa.Column("watermark", sa.String(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
    )
    op.create_index("ix_source_runs_source_started", "source_runs", ["source", "started"])
    op.create_table(
        "source_state",
        sa.Column("source", sa.String(), primary_key=True),
        sa.Column("watermark", sa.String(), nullable=True),
        sa.Column("watermark_type", sa.String(), nullable=True),
        sa.Column("files", sa.Text(), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("source_state")
    op.drop_index("ix_source_runs_source_started", table_name="source_runs")
    op.drop_table("source_runs")
