"""Alembic's environment for developers writing a revision; kiln runs migrations itself (kiln.store.migrate).

Example (from the repository root; PATH_OR_URL is a store at the current head)::

    alembic -c src/kiln/store/migrations/alembic.ini -x store=PATH_OR_URL revision --autogenerate --rev-id 0002 -m "..."
"""

from __future__ import annotations

from alembic import context

from kiln.store.database import Database
from kiln.store.location import locate
from kiln.store.migrate import VERSION_TABLE
from kiln.store.schema import metadata

store = context.get_x_argument(as_dictionary=True).get("store")
database = Database(locate(store).url)
with database.engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()
database.close()
