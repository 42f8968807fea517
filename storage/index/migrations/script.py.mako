"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
revision = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels: str | None = ${repr(branch_labels)}
depends_on: str | None = ${repr(depends_on)}

SCHEMA_VERSION = 0  # the schema version this revision makes (storage.index.schema.SCHEMA_VERSION)


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}
    op.execute(sa.text("UPDATE filmless_meta SET value = :v WHERE key = 'schema_version'").bindparams(v=str(SCHEMA_VERSION)))


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
