"""Alembic migrations of the Legend database, shipped inside the package.

:func:`alembic_config` builds a Config that works from an installed package (no ini file
needed); ``Store`` uses it to upgrade every database it opens to the head revision. For the
command line: ``alembic -c legend_core/migrations/alembic.ini upgrade head`` (the URL comes
from ``$LEGEND_DB`` or the default of ``legend_core.config``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent

#: The newest revision; ``Store`` upgrades every database to it.
HEAD = "0008"


def alembic_config(connection: Any = None, url: str | None = None) -> Config:
    """An Alembic Config for the packaged migrations.

    Args:
        connection: An open SQLAlchemy ``Connection`` to migrate (passed to ``env.py``
            through ``config.attributes``); when given, ``url`` is ignored.
        url: A database URL, for use without a connection.
    """
    from alembic.config import Config

    cfg = Config()
    # configparser interpolation: a literal "%" in a path must be doubled.
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg
