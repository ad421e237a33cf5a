"""create training_runs

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "training_runs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("algorithm", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("total_episodes", sa.Integer(), nullable=False),
        sa.Column("timesteps_per_episode", sa.Integer(), nullable=False),
        sa.Column("total_timesteps", sa.BigInteger(), nullable=False),
        sa.Column("maze_size", sa.Integer(), nullable=False),
        sa.Column("maze_mode", sa.String(length=8), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("n_envs", sa.Integer(), nullable=False),
        sa.Column("device_requested", sa.String(length=8), nullable=False),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("device", sa.String(length=16), nullable=True),
        sa.Column("effective_hyperparameters", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("owner", sa.String(length=200), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stop_requested", sa.Boolean(), nullable=False),
        sa.Column("progress_version", sa.Integer(), nullable=False),
        sa.Column("progress_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("episode", sa.Integer(), nullable=False),
        sa.Column("timesteps", sa.BigInteger(), nullable=False),
        sa.Column("maze_episodes", sa.Integer(), nullable=False),
        sa.Column("maze_successes", sa.Integer(), nullable=False),
        sa.Column("reward", sa.Float(), nullable=True),
        sa.Column("success_rate", sa.Float(), nullable=True),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("fps", sa.Float(), nullable=True),
        sa.Column("eval_success_rate", sa.Float(), nullable=True),
        sa.Column("eval_path_efficiency", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("model_path", sa.String(length=500), nullable=True),
        sa.Column("mlflow_run_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_training_runs_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_training_runs_status"), ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_training_runs_status"))
        batch_op.drop_index(batch_op.f("ix_training_runs_created_at"))

    op.drop_table("training_runs")
