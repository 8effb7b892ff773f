"""Vetting results remembered by file sha256, torch version and vetting settings
(explain.workspace.vetting), so a second process does not vet the same graph again.

Revision ID: 0004_vetting_results
"""
import sqlalchemy as sa
from alembic import op

revision = "0004_vetting_results"
down_revision = "0003_job_operator"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vetting_results",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("torch_version", sa.String(length=64), nullable=False),
        sa.Column("settings", sa.String(length=64), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("max_batch_rows", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256", "torch_version", "settings"),
    )


def downgrade() -> None:
    op.drop_table("vetting_results")
