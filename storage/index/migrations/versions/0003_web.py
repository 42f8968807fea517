"""Schema version 4: the web side -- users and API keys, cached DICOMweb metadata, the trash,
an audit log that only grows, and the PostgreSQL pattern index for person-name prefixes.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

SCHEMA_VERSION = 4

# The audit log is append-only from the application: the database itself refuses to change or
# remove a row (a purge of the audit log is a DBA's act, with the trigger dropped by hand).
_SQLITE_TRIGGERS = (
    """CREATE TRIGGER audit_event_no_update BEFORE UPDATE ON audit_event
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON audit_event
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
)
_POSTGRESQL_TRIGGERS = (
    """CREATE OR REPLACE FUNCTION filmless_audit_append_only() RETURNS trigger AS $$
       BEGIN RAISE EXCEPTION 'the audit log is append-only'; END; $$ LANGUAGE plpgsql""",
    """CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON audit_event
       FOR EACH ROW EXECUTE FUNCTION filmless_audit_append_only()""",
)


def _set_version(version: int) -> None:
    meta = sa.table("filmless_meta", sa.column("key", sa.String), sa.column("value", sa.Text))
    op.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(version)))


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    # An index made before alembic gets the tables it lacks from schema.py (see 0002).
    if not inspector.has_table("app_user"):
        op.create_table(
            "app_user",
            sa.Column("pk", sa.Integer(), nullable=False),
            sa.Column("username", sa.String(length=64), nullable=False),
            sa.Column("full_name", sa.String(length=200), server_default="", nullable=False),
            sa.Column("role", sa.String(length=32), nullable=False),
            sa.Column("password_hash", sa.String(length=200), nullable=True),
            sa.Column("disabled", sa.Boolean(), server_default=sa.false(), nullable=False),
            sa.Column("failed_logins", sa.Integer(), server_default="0", nullable=False),
            sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
            sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("password_changed_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("pk"),
            sa.UniqueConstraint("username"),
        )
    if not inspector.has_table("api_key"):
        op.create_table(
            "api_key",
            sa.Column("pk", sa.Integer(), nullable=False),
            sa.Column("key_id", sa.String(length=32), nullable=False),
            sa.Column("secret_sha256", sa.String(length=64), nullable=False),
            sa.Column("user_pk", sa.Integer(), nullable=False),
            sa.Column("description", sa.String(length=400), server_default="", nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
            sa.ForeignKeyConstraint(["user_pk"], ["app_user.pk"]),
            sa.PrimaryKeyConstraint("pk"),
            sa.UniqueConstraint("key_id"),
        )
        op.create_index("ix_api_key_user", "api_key", ["user_pk"], unique=False)
    if not inspector.has_table("instance_metadata"):
        op.create_table(
            "instance_metadata",
            sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
            sa.Column("received_sha256", sa.String(length=64), nullable=False),
            sa.Column("body", sa.LargeBinary(), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("sop_instance_uid"),
        )
    if not inspector.has_table("trash_item"):
        op.create_table(
            "trash_item",
            sa.Column("pk", sa.Integer(), nullable=False),
            sa.Column("trashed_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("actor", sa.String(length=200), nullable=True),
            sa.Column("reason", sa.String(length=400), nullable=False),
            sa.Column("level", sa.String(length=16), nullable=False),
            sa.Column("patient_id", sa.String(length=64), nullable=True),
            sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
            sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
            sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
            sa.Column("sop_class_uid", sa.String(length=64), nullable=True),
            sa.Column("object_key", sa.String(length=200), nullable=False),
            sa.Column("object_sha256", sa.String(length=64), nullable=False),
            sa.Column("stored_size", sa.BigInteger(), nullable=False),
            sa.Column("stored_transfer_syntax", sa.String(length=64), nullable=False),
            sa.Column("received_sha256", sa.String(length=64), nullable=False),
            sa.Column("restored_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True),
            sa.PrimaryKeyConstraint("pk"),
        )
        op.create_index("ix_trash_item_trashed_at", "trash_item", ["trashed_at"], unique=False)
        op.create_index("ix_trash_item_study", "trash_item", ["study_instance_uid"], unique=False)
        op.create_index("ix_trash_item_sop", "trash_item", ["sop_instance_uid"], unique=False)
        op.create_index("ix_trash_item_object_key", "trash_item", ["object_key"], unique=False)
    if bind.dialect.name == "postgresql":
        names = {ix["name"] for ix in inspector.get_indexes("patient")}
        if "ix_patient_name_folded_pattern" not in names:
            op.create_index(
                "ix_patient_name_folded_pattern",
                "patient",
                ["patient_name_folded"],
                postgresql_ops={"patient_name_folded": "text_pattern_ops"},
            )
        for statement in _POSTGRESQL_TRIGGERS:
            op.execute(statement)
    elif bind.dialect.name == "sqlite":
        for statement in _SQLITE_TRIGGERS:
            op.execute(statement)
    _set_version(SCHEMA_VERSION)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_event_append_only ON audit_event")
        op.execute("DROP FUNCTION IF EXISTS filmless_audit_append_only()")
        op.drop_index("ix_patient_name_folded_pattern", table_name="patient")
    elif bind.dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_event_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_event_no_delete")
    op.drop_index("ix_trash_item_object_key", table_name="trash_item")
    op.drop_index("ix_trash_item_sop", table_name="trash_item")
    op.drop_index("ix_trash_item_study", table_name="trash_item")
    op.drop_index("ix_trash_item_trashed_at", table_name="trash_item")
    op.drop_table("trash_item")
    op.drop_table("instance_metadata")
    op.drop_index("ix_api_key_user", table_name="api_key")
    op.drop_table("api_key")
    op.drop_table("app_user")
    _set_version(3)
