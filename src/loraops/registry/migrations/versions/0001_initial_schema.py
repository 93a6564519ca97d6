"""initial schema: bases, adapters, versions, lineage, stage_history, audit_log

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _when() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "bases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("fingerprint", sa.String(80), nullable=False),
        sa.Column("source", sa.String(500), nullable=True),
        _when(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bases")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_bases_fingerprint")),
    )
    op.create_table(
        "adapters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=True),
        _when(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adapters")),
        sa.UniqueConstraint("name", name=op.f("uq_adapters_name")),
    )
    op.create_index(op.f("ix_adapters_tenant"), "adapters", ["tenant"])
    op.create_table(
        "versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("base_fingerprint", sa.String(80), nullable=False),
        sa.Column("dataset_digest", sa.String(200), nullable=True),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("eval_results", sa.JSON(), nullable=True),
        sa.Column("created_by", sa.String(200), nullable=False),
        _when(),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"],
                                name=op.f("fk_versions_adapter_id_adapters")),
        sa.ForeignKeyConstraint(["base_fingerprint"], ["bases.fingerprint"],
                                name=op.f("fk_versions_base_fingerprint_bases")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_versions")),
        sa.UniqueConstraint("adapter_id", "number", name=op.f("uq_versions_adapter_id_number")),
    )
    op.create_table(
        "lineage",
        sa.Column("child_id", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["child_id"], ["versions.id"], name=op.f("fk_lineage_child_id_versions")),
        sa.ForeignKeyConstraint(["parent_id"], ["versions.id"], name=op.f("fk_lineage_parent_id_versions")),
        sa.PrimaryKeyConstraint("child_id", "parent_id", name=op.f("pk_lineage")),
    )
    op.create_table(
        "stage_history",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("previous_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("reason", sa.String(2000), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"],
                                name=op.f("fk_stage_history_adapter_id_adapters")),
        sa.ForeignKeyConstraint(["previous_id"], ["stage_history.id"],
                                name=op.f("fk_stage_history_previous_id_stage_history")),
        sa.ForeignKeyConstraint(["version_id"], ["versions.id"],
                                name=op.f("fk_stage_history_version_id_versions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stage_history")),
    )
    op.create_index("ix_stage_history_current", "stage_history", ["adapter_id", "stage", "id"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("reason", sa.String(2000), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(op.f("ix_audit_log_at"), "audit_log", ["at"])


def downgrade() -> None:
    for table in ("audit_log", "stage_history", "lineage", "versions", "adapters", "bases"):
        op.drop_table(table)  # their indexes go with them
