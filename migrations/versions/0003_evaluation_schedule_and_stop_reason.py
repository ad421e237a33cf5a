"""evaluation schedule, best model and stop reason columns

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("target_success_rate", sa.Float()),
    ("eval_every_episodes", sa.Integer()),
    ("eval_episodes", sa.Integer()),
    ("patience", sa.Integer()),
    ("max_evals_without_improvement", sa.Integer()),
    ("eval_timesteps", sa.BigInteger()),
    ("evals_at_target", sa.Integer()),
    ("evals_without_improvement", sa.Integer()),
    ("best_eval_success_rate", sa.Float()),
    ("best_eval_path_efficiency", sa.Float()),
    ("best_eval_timesteps", sa.BigInteger()),
    ("stop_reason", sa.String(length=24)),
)


def upgrade() -> None:
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        for name, column_type in COLUMNS:
            batch_op.add_column(sa.Column(name, column_type, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        for name, _ in reversed(COLUMNS):
            batch_op.drop_column(name)
