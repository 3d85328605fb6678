"""Alembic migrations of the registry database (env.py; revisions in versions/)."""
