"""telemetry retention: hourly aggregates, and raw telemetry indexed by time

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 14:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "telemetry_hourly",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("hour", sa.BigInteger(), nullable=False),
        sa.Column("reports", sa.BigInteger(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("inferences", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("p50_weighted", sa.Float(), nullable=False),
        sa.Column("p50_count", sa.BigInteger(), nullable=False),
        sa.Column("p95_weighted", sa.Float(), nullable=False),
        sa.Column("p95_count", sa.BigInteger(), nullable=False),
        sa.Column("cpu_percent_sum", sa.Float(), nullable=False),
        sa.Column("memory_percent_sum", sa.Float(), nullable=False),
        sa.Column("system_reports", sa.BigInteger(), nullable=False),
        sa.Column("confidence_hist", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "model_name", "model_version", "hour"),
    )
    with op.batch_alter_table("telemetry_hourly", schema=None) as batch_op:
        batch_op.create_index("ix_telemetry_hourly_hour", ["hour"], unique=False)
    with op.batch_alter_table("telemetry", schema=None) as batch_op:
        batch_op.create_index("ix_telemetry_received_at", ["received_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("telemetry", schema=None) as batch_op:
        batch_op.drop_index("ix_telemetry_received_at")
    with op.batch_alter_table("telemetry_hourly", schema=None) as batch_op:
        batch_op.drop_index("ix_telemetry_hourly_hour")
    op.drop_table("telemetry_hourly")
