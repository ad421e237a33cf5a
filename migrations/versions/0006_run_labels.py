"""run labels (name, tags, notes) and the end-of-run notification

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("tags", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("notes", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("notify_url", sa.String(length=2048), nullable=True))
        batch_op.add_column(sa.Column("notify_state", sa.String(length=16), nullable=True))
        batch_op.create_index(batch_op.f("ix_training_runs_name"), ["name"], unique=False)
        batch_op.create_index(batch_op.f("ix_training_runs_notify_state"), ["notify_state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_training_runs_notify_state"))
        batch_op.drop_index(batch_op.f("ix_training_runs_name"))
        batch_op.drop_column("notify_state")
        batch_op.drop_column("notify_url")
        batch_op.drop_column("notes")
        batch_op.drop_column("tags")
        batch_op.drop_column("name")
