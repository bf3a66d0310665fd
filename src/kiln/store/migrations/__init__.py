"""The store's Alembic migrations: ``versions/`` holds one revision per schema change (run by kiln.store.migrate)."""
