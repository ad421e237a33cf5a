"""tracking and onnx export columns

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fixed_maze_seed", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("tracking_status", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("tracking_error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("onnx_status", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("onnx_error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("onnx_size_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("onnx_opset", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("onnx_export_seconds", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("onnx_parity_passed", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.drop_column("onnx_parity_passed")
        batch_op.drop_column("onnx_export_seconds")
        batch_op.drop_column("onnx_opset")
        batch_op.drop_column("onnx_size_bytes")
        batch_op.drop_column("onnx_error")
        batch_op.drop_column("onnx_status")
        batch_op.drop_column("tracking_error")
        batch_op.drop_column("tracking_status")
        batch_op.drop_column("fixed_maze_seed")
