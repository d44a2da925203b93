"""The claim's index gives its order: contacts by channel, status, priority and next attempt.

``ContactQueue.claim_due`` takes a lane's due ``planned`` contacts highest priority first,
then earliest due. With 0005's index (channel, status, next attempt) every claim read all
the lane's due rows and sorted them to take a batch: 46 ms a claim at 20,000 due SMS on
PostgreSQL. With this one it walks one priority at a time (highest first: the index read
backwards), each priority's due rows in index order, and reads about what it takes: 0.5 ms
(docs/performance-history.md, session 10).

It replaces 0005's index, whose (channel, status) prefix it keeps for the idle lanes'
claims, and 0001's (status, next attempt), which only the old claim read. Every contact
row is updated at least twice (claimed, then settled), and each update of its status
writes a new entry into every index of the table: one index fewer is cheaper dispatch.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_contacts_claim", "contacts", ["channel", "status", "priority", "next_attempt_at"]
    )
    op.drop_index("ix_contacts_channel_status_next", table_name="contacts")
    op.drop_index("ix_contacts_status_next_attempt", table_name="contacts")


def downgrade() -> None:
    op.create_index("ix_contacts_status_next_attempt", "contacts", ["status", "next_attempt_at"])
    op.create_index(
        "ix_contacts_channel_status_next", "contacts", ["channel", "status", "next_attempt_at"]
    )
    op.drop_index("ix_contacts_claim", table_name="contacts")
