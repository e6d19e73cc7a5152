"""The embedding cache stores its vectors in blocks.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 00:00:00

- ``embedding_blocks``: one row per block of up to 4,096 vectors of one space, one dtype
  and one width (keys and vectors as two blobs, a CRC-32 over both); see
  ``legend_core.data.store.blocks`` for the format and why.
- ``embedding_keys``: one row per cached text, ``(space_id, key)`` -> ``(block_id,
  row_no)``.
- Every vector of the old one-row-per-text ``embeddings`` table is packed into blocks,
  space by space in key order, streaming (a page of rows at a time: memory stays bounded
  whatever the cache's size), and keeps its exact bytes and dtype: nothing is encoded
  again. Vectors no forward pass can give (not finite, or all zeros, cached before the
  cache checked its input) are left out; a run encodes those texts again. Then the old
  table is dropped.

On PostgreSQL the blobs are stored uncompressed out of line (``STORAGE EXTERNAL``):
float16 values do not compress, and trying costs every write.

The packing code is written out here, not imported, so that this revision keeps doing
what it did when the application's code moves on; a test reads what it wrote with the
application's reader.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Most vectors and most bytes of vectors per block (as legend_core.data.store.blocks at 0005).
BLOCK_ROWS = 4_096
BLOCK_BYTES = 16 * 2**20
#: Old rows read per query.
PAGE = 1_024
SIZES = {"<f2": 2, "<f4": 4}


def _block_columns() -> list[sa.Column]:
    return [
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "space_id",
            sa.Integer(),
            sa.ForeignKey(
                "embedding_spaces.id", ondelete="CASCADE", name="fk_embedding_blocks_space_id"
            ),
            nullable=False,
        ),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(8), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("checksum", sa.String(32), nullable=False),
        sa.Column("key_data", sa.LargeBinary(), nullable=False),
        sa.Column("vector_data", sa.LargeBinary(), nullable=False),
    ]


def _key_columns() -> list[sa.Column]:
    return [
        sa.Column(
            "space_id",
            sa.Integer(),
            sa.ForeignKey(
                "embedding_spaces.id", ondelete="CASCADE", name="fk_embedding_keys_space_id"
            ),
            primary_key=True,
        ),
        sa.Column("key", sa.LargeBinary(32), primary_key=True),
        sa.Column(
            "block_id",
            sa.Integer(),
            sa.ForeignKey(
                "embedding_blocks.id", ondelete="CASCADE", name="fk_embedding_keys_block_id"
            ),
            nullable=False,
        ),
        sa.Column("row_no", sa.Integer(), nullable=False),
    ]


def _row_columns() -> list[sa.Column]:
    """The one-row-per-text table, as revision 0002 created it."""
    return [
        sa.Column(
            "space_id",
            sa.Integer(),
            sa.ForeignKey("embedding_spaces.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("key", sa.LargeBinary(32), primary_key=True),
        sa.Column("dtype", sa.String(8), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
    ]


def _tables() -> tuple[sa.Table, sa.Table, sa.Table]:
    meta = sa.MetaData()
    sa.Table("embedding_spaces", meta, sa.Column("id", sa.Integer(), primary_key=True))
    return (
        sa.Table("embedding_blocks", meta, *_block_columns()),
        sa.Table("embedding_keys", meta, *_key_columns()),
        sa.Table("embeddings", meta, *_row_columns()),
    )


def _checksum(n: int, dtype: str, dim: int, keys: bytes, vectors: bytes) -> str:
    crc = zlib.crc32(f"{n}:{dtype}:{dim}:".encode())
    crc = zlib.crc32(vectors, zlib.crc32(keys, crc))
    return f"crc32:{crc:08x}"


def _write_block(
    bind: Any, blocks: sa.Table, keys_table: sa.Table, space_id: int, dtype: str, rows: list
) -> None:
    keys = b"".join(key for key, _ in rows)
    vectors = b"".join(vector for _, vector in rows)
    n = len(rows)
    dim = len(rows[0][1]) // SIZES[dtype]
    values = {"space_id": space_id, "n": n, "dtype": dtype, "dim": dim}
    values |= {"checksum": _checksum(n, dtype, dim, keys, vectors), "key_data": keys}
    block_id = bind.execute(
        blocks.insert(), {**values, "vector_data": vectors}
    ).inserted_primary_key[0]
    bind.execute(
        keys_table.insert(),
        [
            {"space_id": space_id, "key": key, "block_id": block_id, "row_no": i}
            for i, (key, _) in enumerate(rows)
        ],
    )


def _pack_space(bind: Any, tables: tuple[sa.Table, sa.Table, sa.Table], space_id: int) -> None:
    """Pack one space's rows into blocks, a page of rows at a time, in key order."""
    blocks, keys_table, rows_table = tables
    pending: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}
    last: bytes | None = None
    while True:
        query = sa.select(rows_table.c.key, rows_table.c.dtype, rows_table.c.vector).where(
            rows_table.c.space_id == space_id
        )
        if last is not None:
            query = query.where(rows_table.c.key > last)
        page = bind.execute(query.order_by(rows_table.c.key).limit(PAGE)).all()
        if not page:
            break
        last = bytes(page[-1][0])
        for key, dtype, vector in page:
            key, vector = bytes(key), bytes(vector)
            if dtype not in SIZES or len(key) != 32 or len(vector) % SIZES[dtype]:
                raise RuntimeError(
                    f"embedding cache row {key.hex()[:16]} of space {space_id} is damaged "
                    f"(dtype {dtype!r}, {len(vector)} bytes): it cannot be packed"
                )
            values = np.frombuffer(vector, dtype=dtype)
            if not values.size or not np.isfinite(values).all() or not values.any():
                continue  # no forward pass gives it: left out, encoded again when needed
            group = pending.setdefault((dtype, len(vector)), [])
            group.append((key, vector))
            if len(group) >= max(1, min(BLOCK_ROWS, BLOCK_BYTES // len(vector))):
                _write_block(bind, blocks, keys_table, space_id, dtype, group)
                group.clear()
    for (dtype, _), group in sorted(pending.items()):
        if group:
            _write_block(bind, blocks, keys_table, space_id, dtype, group)


def upgrade() -> None:
    """Create the block tables, pack every cached vector into them, drop the row table."""
    # AUTOINCREMENT: SQLite never reuses a deleted block's id (see the model).
    op.create_table("embedding_blocks", *_block_columns(), sqlite_autoincrement=True)
    op.create_index("ix_embedding_blocks_space_id", "embedding_blocks", ["space_id"])
    op.create_table("embedding_keys", *_key_columns())
    op.create_index("ix_embedding_keys_block_id", "embedding_keys", ["block_id"])
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for column in ("key_data", "vector_data"):
            op.execute(f"ALTER TABLE embedding_blocks ALTER COLUMN {column} SET STORAGE EXTERNAL")
    tables = _tables()
    for space_id in bind.scalars(sa.text("SELECT id FROM embedding_spaces ORDER BY id")).all():
        _pack_space(bind, tables, space_id)
    op.drop_table("embeddings")


def downgrade() -> None:
    """Unpack every block into one row per text again (a block at a time), drop the blocks."""
    op.create_table("embeddings", *_row_columns())
    blocks, _, rows_table = _tables()
    bind = op.get_bind()
    last = 0
    while True:
        query = sa.select(blocks).where(blocks.c.id > last).order_by(blocks.c.id).limit(1)
        block = bind.execute(query).one_or_none()
        if block is None:
            break
        last = block.id
        keys, vectors = bytes(block.key_data), bytes(block.vector_data)
        if _checksum(block.n, block.dtype, block.dim, keys, vectors) != block.checksum:
            raise RuntimeError(f"embedding block {block.id} does not match its checksum")
        width = block.dim * SIZES[block.dtype]
        bind.execute(
            rows_table.insert(),
            [
                {
                    "space_id": block.space_id,
                    "key": keys[32 * i : 32 * (i + 1)],
                    "dtype": block.dtype,
                    "vector": vectors[width * i : width * (i + 1)],
                }
                for i in range(block.n)
            ],
        )
    op.drop_table("embedding_keys")
    op.drop_table("embedding_blocks")
