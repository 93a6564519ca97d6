"""fine-tuning API: ft_files, ft_jobs (queue and leases), ft_events, ft_checkpoints

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _id() -> list:
    return [sa.Column("seq", sa.Integer(), nullable=False), sa.Column("id", sa.String(40), nullable=False)]


def _keys(table: str) -> list:
    return [sa.PrimaryKeyConstraint("seq", name=op.f(f"pk_{table}")),
            sa.UniqueConstraint("id", name=op.f(f"uq_{table}_id"))]


def _job_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["job_id"], ["ft_jobs.id"], name=op.f(f"fk_{table}_job_id_ft_jobs"))


def upgrade() -> None:
    op.create_table(
        "ft_files", *_id(),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        *_keys("ft_files"),
    )
    op.create_index(op.f("ix_ft_files_tenant"), "ft_files", ["tenant"])
    op.create_table(
        "ft_jobs", *_id(),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("model", sa.String(400), nullable=False),
        sa.Column("base_name", sa.String(200), nullable=False),
        sa.Column("base_spec", sa.String(1000), nullable=False),
        sa.Column("parent", sa.String(200), nullable=True),
        sa.Column("training_file", sa.String(40), nullable=False),
        sa.Column("validation_file", sa.String(40), nullable=True),
        sa.Column("training_digest", sa.String(64), nullable=False),
        sa.Column("validation_digest", sa.String(64), nullable=True),
        sa.Column("suffix", sa.String(64), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("registry_name", sa.String(64), nullable=False),
        sa.Column("registry_version", sa.Integer(), nullable=True),
        sa.Column("fine_tuned_model", sa.String(400), nullable=True),
        sa.Column("trained_tokens", sa.BigInteger(), nullable=True),
        sa.Column("result_file", sa.String(40), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=True),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        *_keys("ft_jobs"),
    )
    for column in ("tenant", "status", "fine_tuned_model"):
        op.create_index(op.f(f"ix_ft_jobs_{column}"), "ft_jobs", [column])
    op.create_table(
        "ft_events", *_id(),
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.Column("key", sa.String(64), nullable=True),
        _job_fk("ft_events"), *_keys("ft_events"),
        sa.UniqueConstraint("job_id", "key", name=op.f("uq_ft_events_job_id_key")),
    )
    op.create_index("ix_ft_events_job", "ft_events", ["job_id", "seq"])
    op.create_table(
        "ft_checkpoints", *_id(),
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(400), nullable=False),
        sa.Column("registry_version", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        _job_fk("ft_checkpoints"), *_keys("ft_checkpoints"),
        sa.UniqueConstraint("job_id", "step", name=op.f("uq_ft_checkpoints_job_id_step")),
        sa.UniqueConstraint("model_id", name=op.f("uq_ft_checkpoints_model_id")),
    )


def downgrade() -> None:
    for table in ("ft_checkpoints", "ft_events", "ft_jobs", "ft_files"):
        op.drop_table(table)
