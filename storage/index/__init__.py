"""The metadata index (SQLAlchemy Core): schema, engine and the repository."""

from storage.index.engine import create_index_engine
from storage.index.repository import (
    ApplicationEntity,
    CompressionJob,
    Index,
    NewInstance,
    RetrievableInstance,
    Source,
    StoredObject,
)

__all__ = ["ApplicationEntity", "CompressionJob", "Index", "NewInstance", "RetrievableInstance", "Source", "StoredObject", "create_index_engine"]
