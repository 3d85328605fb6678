"""devices: pages half empty on PostgreSQL, so the update every telemetry message makes stays on its page

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 00:40:00
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A storage parameter (nothing for SQLite); rows written before take the room as they are updated.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE devices SET (fillfactor = 50)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE devices RESET (fillfactor)")
