"""Schema version 3: the replication queue (``replication_job``, see storage/replication.py).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

SCHEMA_VERSION = 3


def _set_version(version: int) -> None:
    meta = sa.table("filmless_meta", sa.column("key", sa.String), sa.column("value", sa.Text))
    op.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(version)))


def upgrade() -> None:
    # An index made before alembic is adopted by creating the tables it lacks from schema.py
    # (storage.index.migrate), this one included: then only the version is new.
    if not sa.inspect(op.get_bind()).has_table("replication_job"):
        op.create_table(
            "replication_job",
            sa.Column("pk", sa.Integer(), nullable=False),
            sa.Column("target", sa.String(length=200), nullable=False),
            sa.Column("object_key", sa.String(length=200), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
            sa.Column("last_error", sa.String(length=400), nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("size", sa.BigInteger(), nullable=True),
            sa.Column("sha256", sa.String(length=64), nullable=True),
            sa.Column("key_id", sa.String(length=64), nullable=True),
            sa.PrimaryKeyConstraint("pk"),
            sa.UniqueConstraint("target", "object_key"),
        )
        op.create_index("ix_replication_job_pending", "replication_job", ["target", "done_at"], unique=False)
    _set_version(SCHEMA_VERSION)


def downgrade() -> None:
    op.drop_index("ix_replication_job_pending", table_name="replication_job")
    op.drop_table("replication_job")
    _set_version(2)
