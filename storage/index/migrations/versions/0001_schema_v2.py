"""Schema version 2: the index as filmless first managed it with alembic.

Patient / study / series / instance with their search keys, prior versions, the compression
queue, the deletion outbox, the AE registry with per-AE permissions (``may_*``, ``ascii_only``)
and the audit log. Indexes made before alembic (``filmless_meta`` schema version 1 or 2) are
adopted by :mod:`storage.index.migrate` and stamped with this revision.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

SCHEMA_VERSION = 2


def upgrade() -> None:
    op.create_table(
        "application_entity",
        sa.Column("ae_title", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("description", sa.String(length=400), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("may_echo", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("may_store", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("may_find", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("may_move", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("may_get", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("ascii_only", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("ae_title"),
    )
    op.create_table(
        "audit_event",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=True),
        sa.Column("actor_host", sa.String(length=200), nullable=True),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_audit_at", "audit_event", ["at"], unique=False)
    op.create_index("ix_audit_study", "audit_event", ["study_instance_uid"], unique=False)
    op.create_table(
        "filmless_meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "instance_version",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("object_key", sa.String(length=200), nullable=False),
        sa.Column("object_sha256", sa.String(length=64), nullable=False),
        sa.Column("stored_size", sa.BigInteger(), nullable=False),
        sa.Column("stored_transfer_syntax", sa.String(length=64), nullable=False),
        sa.Column("received_sha256", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source_aet", sa.String(length=16), nullable=True),
        sa.Column("source_host", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("object_key"),
        sa.UniqueConstraint("sop_instance_uid", "version"),
    )
    op.create_index("ix_instance_version_uid", "instance_version", ["sop_instance_uid"], unique=False)
    op.create_table(
        "object_gc",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("object_key", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_table(
        "patient",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("patient_key", sa.String(length=200), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=True),
        sa.Column("patient_name", sa.String(length=400), nullable=True),
        sa.Column("patient_name_folded", sa.String(length=400), nullable=True),
        sa.Column("patient_birth_date", sa.String(length=8), nullable=True),
        sa.Column("patient_sex", sa.String(length=16), nullable=True),
        sa.Column("other_patient_ids", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("patient_key"),
    )
    op.create_index("ix_patient_name_folded", "patient", ["patient_name_folded"], unique=False)
    op.create_index("ix_patient_patient_id", "patient", ["patient_id"], unique=False)
    op.create_table(
        "study",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("patient_pk", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_date", sa.String(length=8), nullable=True),
        sa.Column("study_time", sa.String(length=32), nullable=True),
        sa.Column("accession_number", sa.String(length=64), nullable=True),
        sa.Column("issuer_of_accession_number", sa.String(length=64), nullable=True),
        sa.Column("study_id", sa.String(length=64), nullable=True),
        sa.Column("study_description", sa.String(length=400), nullable=True),
        sa.Column("referring_physician_name", sa.String(length=400), nullable=True),
        sa.Column("referring_physician_name_folded", sa.String(length=400), nullable=True),
        sa.Column("admission_id", sa.String(length=64), nullable=True),
        sa.Column("institution_name", sa.String(length=400), nullable=True),
        sa.Column("specific_character_set", sa.String(length=200), nullable=True),
        sa.Column("modalities_in_study", sa.String(length=200), nullable=False),
        sa.Column("sop_classes_in_study", sa.Text(), nullable=False),
        sa.Column("number_of_series", sa.Integer(), nullable=False),
        sa.Column("number_of_instances", sa.Integer(), nullable=False),
        sa.Column("received_bytes", sa.BigInteger(), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["patient_pk"], ["patient.pk"]),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("study_instance_uid"),
    )
    op.create_index("ix_study_accession", "study", ["accession_number"], unique=False)
    op.create_index("ix_study_date", "study", ["study_date"], unique=False)
    op.create_index("ix_study_patient_pk", "study", ["patient_pk"], unique=False)
    op.create_index("ix_study_referring_folded", "study", ["referring_physician_name_folded"], unique=False)
    op.create_table(
        "series",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("study_pk", sa.Integer(), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("series_number", sa.Integer(), nullable=True),
        sa.Column("series_description", sa.String(length=400), nullable=True),
        sa.Column("body_part_examined", sa.String(length=64), nullable=True),
        sa.Column("series_date", sa.String(length=8), nullable=True),
        sa.Column("series_time", sa.String(length=32), nullable=True),
        sa.Column("protocol_name", sa.String(length=400), nullable=True),
        sa.Column("station_name", sa.String(length=64), nullable=True),
        sa.Column("manufacturer", sa.String(length=64), nullable=True),
        sa.Column("manufacturer_model_name", sa.String(length=64), nullable=True),
        sa.Column("performing_physician_name", sa.String(length=400), nullable=True),
        sa.Column("laterality", sa.String(length=16), nullable=True),
        sa.Column("number_of_instances", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["study_pk"], ["study.pk"]),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("series_instance_uid"),
    )
    op.create_index("ix_series_modality", "series", ["modality"], unique=False)
    op.create_index("ix_series_study_pk", "series", ["study_pk"], unique=False)
    op.create_table(
        "instance",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("series_pk", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("content_date", sa.String(length=8), nullable=True),
        sa.Column("content_time", sa.String(length=32), nullable=True),
        sa.Column("acquisition_datetime", sa.String(length=32), nullable=True),
        sa.Column("image_type", sa.String(length=200), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=True),
        sa.Column("columns", sa.Integer(), nullable=True),
        sa.Column("bits_allocated", sa.Integer(), nullable=True),
        sa.Column("bits_stored", sa.Integer(), nullable=True),
        sa.Column("samples_per_pixel", sa.Integer(), nullable=True),
        sa.Column("photometric_interpretation", sa.String(length=32), nullable=True),
        sa.Column("number_of_frames", sa.Integer(), nullable=True),
        sa.Column("specific_character_set", sa.String(length=200), nullable=True),
        sa.Column("received_transfer_syntax", sa.String(length=64), nullable=False),
        sa.Column("stored_transfer_syntax", sa.String(length=64), nullable=False),
        sa.Column("received_size", sa.BigInteger(), nullable=False),
        sa.Column("received_sha256", sa.String(length=64), nullable=False),
        sa.Column("stored_size", sa.BigInteger(), nullable=False),
        sa.Column("object_key", sa.String(length=200), nullable=False),
        sa.Column("object_sha256", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("pending_compression", sa.Boolean(), nullable=False),
        sa.Column("compression_note", sa.String(length=400), nullable=True),
        sa.Column("flags", sa.String(length=400), nullable=False),
        sa.Column("warnings", sa.Text(), nullable=True),
        sa.Column("source_aet", sa.String(length=16), nullable=True),
        sa.Column("source_host", sa.String(length=200), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["series_pk"], ["series.pk"]),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("object_key"),
        sa.UniqueConstraint("sop_instance_uid"),
    )
    op.create_index("ix_instance_pending", "instance", ["pending_compression"], unique=False)
    op.create_index("ix_instance_series_pk", "instance", ["series_pk"], unique=False)
    op.create_table(
        "compression_job",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("instance_pk", sa.Integer(), nullable=False),
        sa.Column("object_key", sa.String(length=200), nullable=False),
        sa.Column("target_transfer_syntax", sa.String(length=64), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(length=100), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("target_key", sa.String(length=200), nullable=True),
        sa.Column("last_error", sa.String(length=400), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["instance_pk"], ["instance.pk"]),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("instance_pk"),
    )
    op.create_index("ix_compression_job_claim", "compression_job", ["claimed_until"], unique=False)

    meta = sa.table("filmless_meta", sa.column("key", sa.String), sa.column("value", sa.Text))
    op.bulk_insert(meta, [{"key": "schema_version", "value": str(SCHEMA_VERSION)}])


def downgrade() -> None:
    for table in (
        "compression_job",
        "instance",
        "series",
        "study",
        "patient",
        "object_gc",
        "instance_version",
        "filmless_meta",
        "audit_event",
        "application_entity",
    ):
        op.drop_table(table)
