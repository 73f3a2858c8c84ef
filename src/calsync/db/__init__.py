"""Storage: SQLAlchemy 2.0 models, engine/session set-up and Alembic migrations."""

from calsync.db.session import Database, make_engine, upgrade

__all__ = ["Database", "make_engine", "upgrade"]
