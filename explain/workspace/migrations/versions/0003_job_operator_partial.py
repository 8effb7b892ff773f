"""Jobs remember whether their owner is the operator (the CLI), so the worker acts as the
operator when it loads the model and saves the run, as the CLI itself would; and a running job
may publish a partial result (a dataset run's summary so far) as a blob every session can draw.

Revision ID: 0003_job_operator
"""
import sqlalchemy as sa
from alembic import op

revision = "0003_job_operator"
down_revision = "0002_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("owner_is_operator", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("partial_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("partial_sha256")
        batch.drop_column("owner_is_operator")
