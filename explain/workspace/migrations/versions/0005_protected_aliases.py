"""Protected aliases (explain.workspace.registry): an alias only admins and its named approvers may
move, through an approving decision; a decision records the comparison run it was made on.

Revision ID: 0005_protected_aliases
"""
import sqlalchemy as sa
from alembic import op

revision = "0005_protected_aliases"
down_revision = "0004_vetting_results"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "protected_aliases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("approvers", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model_id", "name"),
    )
    op.add_column("decisions", sa.Column("comparison_run", sa.String(length=32), nullable=True))


def downgrade() -> None:
    op.drop_column("decisions", "comparison_run")
    op.drop_table("protected_aliases")
