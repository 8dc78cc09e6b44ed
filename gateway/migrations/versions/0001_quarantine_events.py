"""The quarantine events table.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quarantine_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(255), nullable=False),
        sa.Column("frame_id", sa.String(128), nullable=False),
        sa.Column("topic", sa.String(1024), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("original_label", sa.Integer(), nullable=False),
        sa.Column("label", sa.Integer(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("flagged_by", sa.JSON(), nullable=False),
        sa.Column("bundle_name", sa.String(255), nullable=False),
        sa.Column("bundle_version", sa.String(64), nullable=False),
        sa.Column("image", sa.LargeBinary(), nullable=True),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.UniqueConstraint("device_id", "frame_id", name="uq_quarantine_device_frame"),
    )
    op.create_index("ix_quarantine_events_device_id", "quarantine_events", ["device_id"])
    op.create_index("ix_quarantine_events_received_at", "quarantine_events", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_quarantine_events_received_at", "quarantine_events")
    op.drop_index("ix_quarantine_events_device_id", "quarantine_events")
    op.drop_table("quarantine_events")
