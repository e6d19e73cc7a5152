"""Alembic environment for the Legend database.

Run programmatically by ``Store`` (the open connection arrives in
``config.attributes["connection"]``) or from the command line with ``alembic.ini``.
``render_as_batch`` lets SQLite alter tables by copying them; other databases alter in place.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from legend_core.config import database_url
from legend_core.data.schema import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate the connection given by ``Store``, or one opened from the configured URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # Command-line use: configure logging from the ini file and open our own engine.
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    url = config.get_main_option("sqlalchemy.url") or database_url()
    from legend_core.data.store import make_engine

    engine = make_engine(url)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


def run_migrations_offline() -> None:
    """Emit the SQL for the configured URL instead of running it (``alembic upgrade --sql``)."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url") or database_url(),
        target_metadata=target_metadata,
        render_as_batch=True,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
