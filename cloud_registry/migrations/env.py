"""Alembic environment: the engine comes from the registry (cloud_registry.db.migrate), not from an ini file."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from cloud_registry.models import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # `alembic` run by hand: EDGECTL_REGISTRY_* settings name the database
    from cloud_registry.core.config import Settings

    engine = create_engine(Settings().sqlalchemy_url)

with engine.connect() as connection:
    if connection.dialect.name == "postgresql":
        # Several replicas may start at once: one migrates, the others wait for it.
        connection.exec_driver_sql("SELECT pg_advisory_lock(727274)")
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SELECT pg_advisory_unlock(727274)")
        connection.commit()
