"""The metadata index schema (SQLAlchemy Core), the same on SQLite and PostgreSQL.

Four levels (patient / study / series / instance) carry the attributes C-FIND and QIDO-RS
need (PS3.4 C.6.1.1 and C.6.2.1: required, unique and common optional keys). Text is stored
normalised to Unicode NFC; person names also as an accent-folded ``*_folded`` search key.
Around them: prior object versions, the background compression queue, an outbox of objects to
delete, the AE registry and the audit log; the replication queue (schema version 3); users, API
keys, cached DICOMweb metadata and the trash (schema version 4).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    true,
)

SCHEMA_VERSION = 4
"""The version of the schema below. Changing the schema means a new alembic revision in
``storage/index/migrations/versions`` that makes this version (see that package)."""

metadata = MetaData()

# A UI value is at most 64 characters (PS3.5 6.2).
_UID = String(64)

meta = Table(
    "filmless_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

patient = Table(
    "patient",
    metadata,
    Column("pk", Integer, primary_key=True),
    # PatientID + IssuerOfPatientID identify a patient (PS3.3 C.7.1.1); the key joins them.
    Column("patient_key", String(200), nullable=False, unique=True),
    Column("patient_id", String(64), nullable=False),
    Column("issuer_of_patient_id", String(64)),
    Column("patient_name", String(400)),
    Column("patient_name_folded", String(400)),
    Column("patient_birth_date", String(8)),
    Column("patient_sex", String(16)),
    Column("other_patient_ids", Text),  # JSON list of {"id", "issuer", "type"}
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
Index("ix_patient_patient_id", patient.c.patient_id)
Index("ix_patient_name_folded", patient.c.patient_name_folded)
# PostgreSQL uses a plain b-tree for LIKE 'prefix%' only under the C collation; text_pattern_ops
# makes name-prefix search (PatientName=Phan*) an index range scan under any locale.
Index(
    "ix_patient_name_folded_pattern",
    patient.c.patient_name_folded,
    postgresql_ops={"patient_name_folded": "text_pattern_ops"},
).ddl_if(dialect="postgresql")
POSTGRESQL_ONLY_INDEXES = frozenset({"ix_patient_name_folded_pattern"})


def include_object_for(dialect: str) -> Any:
    """Alembic's ``include_object`` hook for ``dialect``: indexes made only on PostgreSQL are
    not expected elsewhere."""

    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        return not (type_ == "index" and name in POSTGRESQL_ONLY_INDEXES and dialect != "postgresql")

    return include

study = Table(
    "study",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("patient_pk", Integer, ForeignKey("patient.pk"), nullable=False),
    Column("study_instance_uid", _UID, nullable=False, unique=True),
    Column("study_date", String(8)),
    Column("study_time", String(32)),
    Column("accession_number", String(64)),
    Column("issuer_of_accession_number", String(64)),
    Column("study_id", String(64)),
    Column("study_description", String(400)),
    Column("referring_physician_name", String(400)),
    Column("referring_physician_name_folded", String(400)),
    Column("admission_id", String(64)),
    Column("institution_name", String(400)),
    Column("specific_character_set", String(200)),
    # Derived, kept up to date inside each ingest transaction.
    Column("modalities_in_study", String(200), nullable=False, default=""),
    Column("sop_classes_in_study", Text, nullable=False, default=""),
    Column("number_of_series", Integer, nullable=False, default=0),
    Column("number_of_instances", Integer, nullable=False, default=0),
    Column("received_bytes", BigInteger, nullable=False, default=0),
    Column("stored_bytes", BigInteger, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
Index("ix_study_patient_pk", study.c.patient_pk)
Index("ix_study_date", study.c.study_date)
Index("ix_study_accession", study.c.accession_number)
Index("ix_study_referring_folded", study.c.referring_physician_name_folded)

series = Table(
    "series",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("study_pk", Integer, ForeignKey("study.pk"), nullable=False),
    Column("series_instance_uid", _UID, nullable=False, unique=True),
    Column("modality", String(16)),
    Column("series_number", Integer),
    Column("series_description", String(400)),
    Column("body_part_examined", String(64)),
    Column("series_date", String(8)),
    Column("series_time", String(32)),
    Column("protocol_name", String(400)),
    Column("station_name", String(64)),
    Column("manufacturer", String(64)),
    Column("manufacturer_model_name", String(64)),
    Column("performing_physician_name", String(400)),
    Column("laterality", String(16)),
    Column("number_of_instances", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
Index("ix_series_study_pk", series.c.study_pk)
Index("ix_series_modality", series.c.modality)

instance = Table(
    "instance",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("series_pk", Integer, ForeignKey("series.pk"), nullable=False),
    Column("sop_instance_uid", _UID, nullable=False, unique=True),
    Column("sop_class_uid", _UID, nullable=False),
    Column("instance_number", Integer),
    Column("content_date", String(8)),
    Column("content_time", String(32)),
    Column("acquisition_datetime", String(32)),
    Column("image_type", String(200)),
    Column("rows", Integer),
    Column("columns", Integer),
    Column("bits_allocated", Integer),
    Column("bits_stored", Integer),
    Column("samples_per_pixel", Integer),
    Column("photometric_interpretation", String(32)),
    Column("number_of_frames", Integer),
    Column("specific_character_set", String(200)),
    # What arrived and what is stored.
    Column("received_transfer_syntax", _UID, nullable=False),
    Column("stored_transfer_syntax", _UID, nullable=False),
    Column("received_size", BigInteger, nullable=False),
    # The sha256 of the object as it is stored when kept as received (filmless's file meta +
    # the dataset as it arrived; rows from before 2026-11-24 hash the dataset alone): equal
    # hashes mean a duplicate, other hashes are compared by content.
    Column("received_sha256", String(64), nullable=False),
    Column("stored_size", BigInteger, nullable=False),
    Column("object_key", String(200), nullable=False, unique=True),
    Column("object_sha256", String(64), nullable=False),
    Column("version", Integer, nullable=False, default=1),
    Column("pending_compression", Boolean, nullable=False, default=False),
    Column("compression_note", String(400)),
    Column("flags", String(400), nullable=False, default=""),
    Column("warnings", Text),
    Column("source_aet", String(16)),
    Column("source_host", String(200)),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("stored_at", DateTime(timezone=True), nullable=False),
)
Index("ix_instance_series_pk", instance.c.series_pk)
Index("ix_instance_pending", instance.c.pending_compression)

# Objects a newer version replaced: kept until an explicit purge (never silently destroyed).
instance_version = Table(
    "instance_version",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("sop_instance_uid", _UID, nullable=False),
    Column("version", Integer, nullable=False),
    Column("object_key", String(200), nullable=False, unique=True),
    Column("object_sha256", String(64), nullable=False),
    Column("stored_size", BigInteger, nullable=False),
    Column("stored_transfer_syntax", _UID, nullable=False),
    Column("received_sha256", String(64), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("superseded_at", DateTime(timezone=True), nullable=False),
    Column("source_aet", String(16)),
    Column("source_host", String(200)),
    UniqueConstraint("sop_instance_uid", "version"),
)
Index("ix_instance_version_uid", instance_version.c.sop_instance_uid)

# The background compression queue. A job names the object it applies to; if the instance
# has moved on to another object meanwhile, the job's result is discarded.
compression_job = Table(
    "compression_job",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("instance_pk", Integer, ForeignKey("instance.pk"), nullable=False, unique=True),
    Column("object_key", String(200), nullable=False),
    Column("target_transfer_syntax", _UID, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("claimed_by", String(100)),
    Column("claimed_until", DateTime(timezone=True)),
    Column("target_key", String(200)),
    Column("last_error", String(400)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
Index("ix_compression_job_claim", compression_job.c.claimed_until)

# Outbox of objects to delete. Deletion is decided in an index transaction and carried out
# after it commits, so a crash never leaves a row pointing at a deleted object.
object_gc = Table(
    "object_gc",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("object_key", String(200), nullable=False),
    Column("reason", String(100), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

application_entity = Table(
    "application_entity",
    metadata,
    Column("ae_title", String(16), primary_key=True),
    Column("host", String(200), nullable=False),
    Column("port", Integer, nullable=False),
    Column("description", String(400), nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # What the AE may ask of us (schema version 2). Storage commitment, worklist and MPPS
    # follow the same pattern when they arrive.
    Column("may_echo", Boolean, nullable=False, default=True, server_default=true()),
    Column("may_store", Boolean, nullable=False, default=True, server_default=true()),
    Column("may_find", Boolean, nullable=False, default=True, server_default=true()),
    Column("may_move", Boolean, nullable=False, default=True, server_default=true()),
    Column("may_get", Boolean, nullable=False, default=True, server_default=true()),
    # C-FIND responses in plain ASCII without diacritics, for consoles that cannot show UTF-8.
    Column("ascii_only", Boolean, nullable=False, default=False, server_default=false()),
)

# Append-only from the application (who, from where, what, result, when).
audit_event = Table(
    "audit_event",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("action", String(64), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("actor", String(200)),
    Column("actor_host", String(200)),
    Column("study_instance_uid", _UID),
    Column("series_instance_uid", _UID),
    Column("sop_instance_uid", _UID),
    Column("detail", Text),
)
Index("ix_audit_at", audit_event.c.at)
Index("ix_audit_study", audit_event.c.study_instance_uid)

# Replication of the objects to a second store (schema version 3; storage/replication.py): one
# row per (target, object), pending until copied (done_at), retried with back-off on failure.
replication_job = Table(
    "replication_job",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("target", String(200), nullable=False),
    Column("object_key", String(200), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("claimed_until", DateTime(timezone=True)),
    Column("last_error", String(400)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("done_at", DateTime(timezone=True)),
    # The object's bytes as replicated (still encrypted under client-side encryption).
    Column("size", BigInteger),
    Column("sha256", String(64)),
    Column("key_id", String(64)),
    UniqueConstraint("target", "object_key"),
)
Index("ix_replication_job_pending", replication_job.c.target, replication_job.c.done_at)

# --- schema version 4: the web side -----------------------------------------------------------

# People and systems that use the HTTP API. Passwords are argon2id hashes (PHC strings); a user
# without one signs in only with API keys (or through an external OIDC issuer).
app_user = Table(
    "app_user",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("full_name", String(200), nullable=False, default="", server_default=""),
    Column("role", String(32), nullable=False),
    Column("password_hash", String(200)),
    Column("disabled", Boolean, nullable=False, default=False, server_default=false()),
    Column("failed_logins", Integer, nullable=False, default=0, server_default="0"),
    Column("locked_until", DateTime(timezone=True)),
    Column("last_login_at", DateTime(timezone=True)),
    Column("password_changed_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Long-lived keys for systems (the EMR): the key's secret is random (256 bits), so a sha256 of
# it is enough to check it and useless to whoever reads the table.
api_key = Table(
    "api_key",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("key_id", String(32), nullable=False, unique=True),
    Column("secret_sha256", String(64), nullable=False),
    Column("user_pk", Integer, ForeignKey("app_user.pk"), nullable=False),
    Column("description", String(400), nullable=False, default="", server_default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("last_used_at", DateTime(timezone=True)),
)
Index("ix_api_key_user", api_key.c.user_pk)

# DICOMweb metadata (PS3.18 10.4.1.2, application/dicom+json without bulk data) of each current
# instance, made once from its object and kept here (zlib-compressed JSON) so a series'
# /metadata is one index read. ``received_sha256`` names the content it was made from: a newer
# version of the instance makes the row stale.
instance_metadata = Table(
    "instance_metadata",
    metadata,
    Column("sop_instance_uid", _UID, primary_key=True),
    Column("received_sha256", String(64), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Instances deleted through the API (admin only): their rows leave the index, their objects
# stay, recoverable, until ``filmless purge`` removes them after the retention period.
trash_item = Table(
    "trash_item",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("trashed_at", DateTime(timezone=True), nullable=False),
    Column("actor", String(200)),
    Column("reason", String(400), nullable=False),
    Column("level", String(16), nullable=False),  # what was deleted: STUDY, SERIES or IMAGE
    Column("patient_id", String(64)),
    Column("study_instance_uid", _UID, nullable=False),
    Column("series_instance_uid", _UID, nullable=False),
    Column("sop_instance_uid", _UID, nullable=False),
    Column("sop_class_uid", _UID),
    Column("object_key", String(200), nullable=False),
    Column("object_sha256", String(64), nullable=False),
    Column("stored_size", BigInteger, nullable=False),
    Column("stored_transfer_syntax", _UID, nullable=False),
    Column("received_sha256", String(64), nullable=False),
    Column("restored_at", DateTime(timezone=True)),
    Column("purged_at", DateTime(timezone=True)),
)
Index("ix_trash_item_trashed_at", trash_item.c.trashed_at)
Index("ix_trash_item_study", trash_item.c.study_instance_uid)
Index("ix_trash_item_sop", trash_item.c.sop_instance_uid)
Index("ix_trash_item_object_key", trash_item.c.object_key)  # is_referenced, on every object deletion
