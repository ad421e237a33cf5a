"""sweeps table, and the sweep and trial of a run

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("algorithm", sa.String(length=8), nullable=False),
        sa.Column("maze_size", sa.Integer(), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("n_trials", sa.Integer(), nullable=False),
        sa.Column("parallel_trials", sa.Integer(), nullable=False),
        sa.Column("trials_claimed", sa.Integer(), nullable=False),
        sa.Column("mlflow_run_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_sweeps_status"), "sweeps", ["status"], unique=False)
    op.create_index(op.f("ix_sweeps_created_at"), "sweeps", ["created_at"], unique=False)
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sweep_id", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("sweep_trial", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_training_runs_sweep_id"), ["sweep_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_training_runs_sweep_id"))
        batch_op.drop_column("sweep_trial")
        batch_op.drop_column("sweep_id")
    op.drop_index(op.f("ix_sweeps_created_at"), table_name="sweeps")
    op.drop_index(op.f("ix_sweeps_status"), table_name="sweeps")
    op.drop_table("sweeps")
