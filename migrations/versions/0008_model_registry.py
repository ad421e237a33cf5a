"""registering a run's model in the MLflow model registry (register_as)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("register_as", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("registry_status", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("registered_model_version", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("registry_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.drop_column("registry_error")
        batch_op.drop_column("registered_model_version")
        batch_op.drop_column("registry_status")
        batch_op.drop_column("register_as")
