"""The embedding cache's storage: cached vectors in blocks, one database row per block.

Two tables (migration 0005):

- ``embedding_blocks``: one row per block of up to :data:`BLOCK_ROWS` vectors of one
  space, one dtype and one width: ``n``, ``dtype`` (``<f2`` or ``<f4``), ``dim``, a
  ``checksum``, ``key_data`` (``n`` × 32 bytes, ascending) and ``vector_data`` (``n`` ×
  ``dim`` values, row-major, little-endian).
- ``embedding_keys``: one row per cached text, ``(space_id, key)`` its primary key,
  pointing at ``(block_id, row_no)``: lookups of a few keys, and the one place where two
  writers of the same key meet (``INSERT ... ON CONFLICT DO NOTHING``: the first wins).

Why blobs inside the database rather than files beside it: a team server's PostgreSQL is
the only storage every server of the team shares, and one transaction writes a block and
its index rows, so a writer killed at any point leaves either the whole block or nothing
(files would need their own locking, fsync and garbage collection, and would not be
shared). A block of 512 vectors of 576 float16 values is 590 KB: one row replaces 512,
reads are sequential and the projection of a block is one product over a contiguous array.

What every reader may rely on (each write keeps it, :func:`write_block`, :func:`forget`):

1. Every row of every committed block has exactly one index row, and it points at that
   row; so a key is in at most one block of its space, and a scan of the blocks alone
   sees each cached key once. A writer whose index row loses to a concurrent writer's
   rolls its transaction back (:class:`LostRace`) and writes again without that key.
2. Blocks are never changed: forgetting vectors deletes their block and writes a new one
   with the rest, in one transaction.
3. Every block read is checked against its CRC-32 (header, keys and vectors) and its
   lengths; a block that fails is reported (:class:`CacheCorruptionError`), never used.
4. No block holds a vector a forward pass cannot give
   (:func:`legend_core.method.margins.vector_problem`).

Nothing here imports torch, and nothing here manages transactions: each function runs on
the caller's ``Connection`` (the store's :mod:`~legend_core.data.store.cache` decides where
transactions begin and end).
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Connection, delete, func, insert, select

from legend_core.data.schema import EmbeddingBlock, EmbeddingKey
from legend_core.data.store.engine import BULK_IN_CHUNK, insert_or_skip
from legend_core.method.margins import projections, vector_problem
from legend_core.util import chunks

#: Bytes of a key (a SHA-256 digest, see :func:`legend_core.util.text_key`).
KEY_BYTES = 32
#: Most vectors per block; a put of more writes several blocks.
BLOCK_ROWS = 4_096
#: Most bytes of vectors per block (wide models get fewer rows per block).
BLOCK_BYTES = 16 * 2**20
#: Largest magnitude float16 holds; a vector with a larger value is stored as float32.
FLOAT16_MAX = 65504.0
#: Stored dtypes and their sizes.
DTYPES = {"<f2": 2, "<f4": 4}
#: Lookups of fewer keys always probe the index; larger ones scan the space's blocks when
#: they are at least 1/SCAN_SHARE of its vectors. A probe costs ~20 µs per key (the IN
#: lists), a scan ~1.5 µs per cached 576-wide vector, read and projected (BENCHMARKS.md §3).
SCAN_MIN_KEYS = 256
SCAN_SHARE = 16
#: Block ids per ``IN (...)`` list when fetching blocks found through the index.
BLOCK_IN_CHUNK = 500
#: Rounds of index probes when blocks vanish between two statements (a concurrent forget).
PROBE_ROUNDS = 5
#: Blocks read ahead of the thread that projects them.
READ_AHEAD = 4

BLOCKS = EmbeddingBlock.__table__
KEYS = EmbeddingKey.__table__


class CacheCorruptionError(RuntimeError):
    """A stored block does not match its checksum or its own lengths: the database was
    damaged outside this code (the block is never used)."""


class LostRace(Exception):
    """A concurrent writer cached some of this block's keys first: roll back, write again."""


# --- what may be cached (the rule: legend_core.method.margins.vector_problem) -----------------


def _refuse(key: bytes, problem: str) -> ValueError:
    return ValueError(f"refusing to cache the vector of text {key.hex()[:16]}: {problem}")


def pack(
    items: Mapping[bytes, np.ndarray], max_rows: int | None = None
) -> list[tuple[list[bytes], np.ndarray]]:
    """Check vectors to cache and lay them out as blocks: ``(keys ascending, matrix)``.

    Each vector is stored as float16, or as float32 when a value is beyond float16's
    range (the row cache's rule, so stored values are what they were) or when float16
    would round all its values to zero; a block holds one dtype. Blocks hold at most
    ``max_rows`` rows (default :data:`BLOCK_ROWS`) and :data:`BLOCK_BYTES` bytes.

    Raises:
        ValueError: A key is not 32 bytes; a vector is empty, not finite or all zeros (no
            forward pass yields one); or the vectors differ in width. Nothing is packed
            then.
    """
    keys: list[bytes] = []
    vectors: list[np.ndarray] = []
    for key, vector in items.items():
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
            raise ValueError("embedding keys are 32-byte digests (see text_key)")
        v = np.asarray(vector, dtype=np.float32).reshape(-1)
        if v.size == 0:
            raise _refuse(bytes(key), vector_problem(v))
        keys.append(bytes(key))
        vectors.append(v)
    if not keys:
        return []
    widths = {v.size for v in vectors}
    if len(widths) > 1:
        raise ValueError(f"vectors cached together must have one width; got {sorted(widths)}")
    matrix = np.stack(vectors)
    bad = ~(np.isfinite(matrix).all(1) & matrix.any(1))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])  # the first in the caller's order, as named
        raise _refuse(keys[first], vector_problem(matrix[first]))
    with np.errstate(over="ignore"):  # rows past float16's range stay float32 below
        half = matrix.astype("<f2")
    # float32 past float16's range (as the row cache did), and where float16 would round
    # every value to zero (a vector the cache would then refuse).
    wide = (np.abs(matrix).max(1) > FLOAT16_MAX) | ~half.any(1)
    dim = matrix.shape[1]
    blocks = []
    for dtype, rows, values in (("<f2", ~wide, half), ("<f4", wide, matrix)):
        chosen = sorted(np.flatnonzero(rows).tolist(), key=keys.__getitem__)
        per_block = max(1, min(max_rows or BLOCK_ROWS, BLOCK_BYTES // (dim * DTYPES[dtype])))
        for part in chunks(chosen, per_block):
            blocks.append(([keys[i] for i in part], values[list(part)].astype(dtype)))
    return blocks


# --- the block format -------------------------------------------------------------------------


def checksum(n: int, dtype: str, dim: int, keys: bytes, vectors: bytes) -> str:
    """CRC-32 of a block's header, keys and vectors, as ``crc32:xxxxxxxx``."""
    crc = zlib.crc32(f"{n}:{dtype}:{dim}:".encode())
    crc = zlib.crc32(vectors, zlib.crc32(keys, crc))
    return f"crc32:{crc:08x}"


def encode_block(keys: Sequence[bytes], matrix: np.ndarray) -> dict[str, Any]:
    """The columns of one block (no check of the values: see :func:`pack`)."""
    dtype = matrix.dtype.newbyteorder("<").str
    if dtype not in DTYPES or matrix.ndim != 2 or matrix.shape[0] != len(keys):
        raise ValueError(f"a block is an (n, dim) float16 or float32 matrix; got {matrix.shape}")
    key_blob = b"".join(keys)
    vector_blob = np.ascontiguousarray(matrix, dtype=dtype).tobytes()
    n, dim = matrix.shape
    return {
        "n": n,
        "dtype": dtype,
        "dim": dim,
        "checksum": checksum(n, dtype, dim, key_blob, vector_blob),
        "key_data": key_blob,
        "vector_data": vector_blob,
    }


@dataclass(frozen=True)
class Block:
    """A checked block: ``keys`` is n × 32 bytes; ``vectors`` (n, dim), stored dtype."""

    id: int
    keys: bytes
    vectors: np.ndarray

    @property
    def n(self) -> int:
        return len(self.keys) // KEY_BYTES

    def key(self, row: int) -> bytes:
        return self.keys[row * KEY_BYTES : (row + 1) * KEY_BYTES]


def decode_block(
    block_id: int,
    n: int,
    dtype: str,
    dim: int,
    stored_checksum: str,
    keys: bytes,
    vectors: bytes | None,
) -> Block:
    """Check a stored block and view it as arrays (no copy of the vectors).

    With ``vectors=None`` (a read of the keys only) the lengths are checked, not the
    checksum, which covers the vectors too.

    Raises:
        CacheCorruptionError: Unknown dtype, lengths that disagree with ``n`` and ``dim``,
            or a checksum that does not match.
    """
    keys = bytes(keys)
    where = f"embedding block {block_id}"
    if dtype not in DTYPES or n < 1 or dim < 1:
        raise CacheCorruptionError(f"{where} has a bad header (n={n}, dtype={dtype}, dim={dim})")
    if len(keys) != n * KEY_BYTES:
        raise CacheCorruptionError(f"{where}: {len(keys)} bytes of keys for {n} rows")
    if vectors is None:
        return Block(block_id, keys, np.empty((0, dim), dtype))
    vectors = bytes(vectors)
    if len(vectors) != n * dim * DTYPES[dtype]:
        raise CacheCorruptionError(f"{where}: {len(vectors)} bytes of vectors for {n}×{dim}")
    if checksum(n, dtype, dim, keys, vectors) != stored_checksum:
        raise CacheCorruptionError(f"{where} does not match its checksum")
    return Block(block_id, keys, np.frombuffer(vectors, dtype=dtype).reshape(n, dim))


# --- finding wanted keys in a block -----------------------------------------------------------


def _words(blob: bytes) -> np.ndarray:
    """Keys as rows of four native uint64 read big-endian: rows sort as the bytes do."""
    return np.frombuffer(blob, dtype=">u8").reshape(-1, 4).astype(np.uint64)


class KeyLookup:
    """The distinct keys of a lookup, found in a block's keys with numpy, not per key.

    Keys are SHA-256 digests, so their first 8 bytes tell them apart and spread evenly:
    the distinct wanted keys are sorted by that prefix, and a table over its top bits
    (at least 4 slots per key) points at the one key of each slot that holds exactly one;
    a block's keys are found there with one look each (binary search for keys whose slot
    is shared), then compared in full. Should two different wanted keys share their
    whole prefix, every search falls back to a dict (correct, slower).
    """

    def __init__(self, keys: Sequence[bytes]) -> None:
        if set(map(len, keys)) - {KEY_BYTES}:
            raise ValueError("embedding keys are 32-byte digests (see text_key)")
        words = _words(b"".join(keys))
        order = np.argsort(words[:, 0])
        ranked = words[order, 0]
        same_prefix = np.flatnonzero(ranked[1:] == ranked[:-1])
        new = np.ones(len(keys), bool)
        self._fallback: dict[bytes, int] | None = None
        # Only rows whose prefix repeats are compared in full: repeated keys are merged,
        # different keys with one prefix switch to the dict.
        same_key = (words[order[same_prefix + 1]] == words[order[same_prefix]]).all(1)
        if same_key.all():
            new[same_prefix + 1] = False
            self.unique = np.take(words, order[new], axis=0)
            self.inverse = np.empty(len(keys), dtype=np.intp)
            self.inverse[order] = np.cumsum(new) - 1
        else:
            index: dict[bytes, int] = {}
            self.inverse = np.array([index.setdefault(bytes(k), len(index)) for k in keys])
            self.unique = _words(b"".join(index))
            self._fallback = index
        self.prefix = np.ascontiguousarray(self.unique[:, 0])
        # The slot table: -1 empty, -2 shared by several keys, else the key's position.
        bits = min(24, max(1, len(self).bit_length() + 2))
        self._shift = np.uint64(64 - bits)
        slots = (self.prefix >> self._shift).astype(np.intp)
        counts = np.bincount(slots, minlength=1 << bits)
        self._table = np.full(1 << bits, -1, dtype=np.int32)
        alone = counts[slots] == 1
        self._table[slots[alone]] = np.flatnonzero(alone)
        self._table[counts > 1] = -2

    def __len__(self) -> int:
        return len(self.unique)

    def key(self, i: int) -> bytes:
        """The ``i``-th distinct wanted key."""
        return self.unique[i].astype(">u8").tobytes()

    def keys(self) -> list[bytes]:
        """The distinct wanted keys, in lookup order."""
        blob = self.unique.astype(">u8").tobytes()
        return [blob[i : i + KEY_BYTES] for i in range(0, len(blob), KEY_BYTES)]

    def find(self, block_keys: bytes) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, ids)``: the block rows holding wanted keys (ascending) and those keys'
        positions among the distinct wanted keys."""
        if not len(self) or not block_keys:
            return np.zeros(0, np.intp), np.zeros(0, np.intp)
        if self._fallback is not None:
            found = [
                (row, self._fallback.get(block_keys[at : at + KEY_BYTES], -1))
                for row, at in enumerate(range(0, len(block_keys), KEY_BYTES))
            ]
            pairs = np.array([(r, i) for r, i in found if i >= 0], np.intp).reshape(-1, 2)
            return pairs[:, 0], pairs[:, 1]
        words = _words(block_keys)
        needles = words[:, 0]
        at = self._table[(needles >> self._shift).astype(np.intp)]
        shared = np.flatnonzero(at == -2)
        if len(shared):
            near = np.searchsorted(self.prefix, needles[shared])
            near = np.minimum(near, len(self) - 1)
            at[shared] = np.where(self.prefix[near] == needles[shared], near, -1)
        rows = np.flatnonzero(at >= 0)
        at = at[rows]
        same = (self.unique[at] == words[rows]).all(1)
        return rows[same], at[same]


# --- reading ----------------------------------------------------------------------------------


def _scan(conn: Connection, space_id: int, wanted: int) -> bool:
    """Whether reading every block of the space beats probing the index for ``wanted``."""
    if wanted < SCAN_MIN_KEYS:
        return False
    # Summed over the blocks' headers: a few thousand short rows, not millions of keys.
    total = conn.scalar(select(func.sum(BLOCKS.c.n)).where(BLOCKS.c.space_id == space_id)) or 0
    return SCAN_SHARE * wanted >= total


def _block_columns(with_vectors: bool) -> list[Any]:
    columns = [BLOCKS.c.id, BLOCKS.c.n, BLOCKS.c.dtype, BLOCKS.c.dim, BLOCKS.c.checksum]
    return [*columns, BLOCKS.c.key_data] + ([BLOCKS.c.vector_data] if with_vectors else [])


def _decode(row: Any, with_vectors: bool) -> Block:
    return decode_block(*row[:6], row[6] if with_vectors else None)


def blocks(conn: Connection, space_id: int, with_vectors: bool = True) -> Iterator[Block]:
    """Every block of a space, checked, in block order: one statement, so one consistent
    snapshot of the space (a concurrent forget is seen wholly or not at all)."""
    query = select(*_block_columns(with_vectors)).where(BLOCKS.c.space_id == space_id)
    for row in conn.execute(query.order_by(BLOCKS.c.id).execution_options(yield_per=4)):
        yield _decode(row, with_vectors)


def _probe(
    conn: Connection, space_id: int, keys: Sequence[bytes]
) -> dict[int, list[tuple[bytes, int]]]:
    """Where those of ``keys`` that are cached are: block id -> its ``(key, row)`` pairs."""
    where: dict[int, list[tuple[bytes, int]]] = {}
    for chunk in chunks(sorted(keys), BULK_IN_CHUNK):
        query = select(KEYS.c.key, KEYS.c.block_id, KEYS.c.row_no)
        query = query.where(KEYS.c.space_id == space_id, KEYS.c.key.in_(chunk))
        for key, block_id, row_no in conn.execute(query):
            where.setdefault(block_id, []).append((bytes(key), row_no))
    return where


def _probed_blocks(
    conn: Connection, space_id: int, keys: Sequence[bytes], with_vectors: bool
) -> Iterator[Block]:
    """The blocks holding any of ``keys``, found through the index (two statements).

    A concurrent forget may replace a block between the two; then the index's rows no
    longer match what is read (the block is gone, or its row holds another key), and
    those keys are looked up again, so the keys the new block kept are still found.
    """
    todo = keys
    for _round in range(PROBE_ROUNDS):
        where = _probe(conn, space_id, todo)
        todo = []
        read: set[int] = set()
        for chunk in chunks(sorted(where), BLOCK_IN_CHUNK):
            query = select(*_block_columns(with_vectors)).where(BLOCKS.c.id.in_(chunk))
            for row in conn.execute(query.order_by(BLOCKS.c.id).execution_options(yield_per=4)):
                block = _decode(row, with_vectors)
                read.add(block.id)
                todo += [k for k, r in where[block.id] if r >= block.n or block.key(r) != k]
                yield block
        todo += [k for block_id, found in where.items() if block_id not in read for k, _ in found]
        if not todo:
            return


def _space_blocks(
    conn: Connection, space_id: int, lookup: KeyLookup, with_vectors: bool
) -> Iterator[Block]:
    if _scan(conn, space_id, len(lookup)):
        return blocks(conn, space_id, with_vectors)
    return _probed_blocks(conn, space_id, lookup.keys(), with_vectors)


def _found_rows(lookup: KeyLookup, got: np.ndarray, block: Block) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the block holding wanted keys not found in an earlier block (the first
    block wins; invariant 1 says no key is in two, this keeps reads deterministic if one
    ever were)."""
    rows, ids = lookup.find(block.keys)
    fresh = ~got[ids]
    return rows[fresh], ids[fresh]


def cached(conn: Connection, space_id: int, keys: Sequence[bytes]) -> set[bytes]:
    """Which of ``keys`` are cached in the space (reads keys, no vectors)."""
    lookup = KeyLookup(keys)
    if not _scan(conn, space_id, len(lookup)):
        where = _probe(conn, space_id, lookup.keys())
        return {key for found in where.values() for key, _ in found}
    got = np.zeros(len(lookup), bool)
    for block in blocks(conn, space_id, with_vectors=False):
        _, ids = _found_rows(lookup, got, block)
        got[ids] = True
    return {lookup.key(i) for i in np.flatnonzero(got).tolist()}


def vectors(
    conn: Connection, space_id: int, keys: Sequence[bytes], batch_size: int = 8_192
) -> Iterator[tuple[list[bytes], np.ndarray]]:
    """The cached vectors of ``keys``: ``(keys, float32 matrix)`` batches, each key once,
    in no particular order."""
    lookup = KeyLookup(keys)
    got = np.zeros(len(lookup), bool)
    for block in _space_blocks(conn, space_id, lookup, with_vectors=True):
        rows, ids = _found_rows(lookup, got, block)
        got[ids] = True
        for part in chunks(np.arange(len(rows)), max(1, batch_size)):
            matrix = block.vectors[rows[part]].astype(np.float32)
            yield [block.key(r) for r in rows[part].tolist()], matrix


@dataclass(frozen=True)
class Projections:
    """Each asked key's projection on a direction, from the cache.

    Attributes:
        values: ``h · v / ‖v‖`` (float64) per asked key, in the order asked; NaN where
            ``found`` is False.
        found: Per asked key: cached, with a vector a forward pass can give.
        refused: Distinct asked keys whose cached vector is not finite or all zeros (from
            before the cache checked its input): forget and encode them again.
    """

    values: np.ndarray
    found: np.ndarray
    refused: list[bytes]


def project(
    conn: Connection, space_id: int, keys: Sequence[bytes], direction: np.ndarray
) -> Projections:
    """Project the cached vectors of ``keys`` on ``direction``, block by block.

    Each block is projected with one product (the whole block when most of its rows are
    wanted, else its wanted rows); only the projections are kept, never the vectors. A
    vector's projection is the same bit for bit whatever block or batch it is in
    (:func:`legend_core.method.margins.projections` sums each row on its own), so margins equal
    the row cache's, and a resumed run equals a fresh one.

    Raises:
        ValueError: The direction is zero or not finite, or its width is not the
            vectors'.
    """
    direction = np.asarray(direction).reshape(-1)
    norm = np.linalg.norm(direction.astype(np.float64))
    if norm == 0 or not np.isfinite(norm):  # refused before reading, not at the first block
        raise ValueError("the direction is zero or not finite")
    lookup = KeyLookup(keys)
    values = np.full(len(lookup), np.nan)
    got = np.zeros(len(lookup), bool)
    refused: list[bytes] = []

    def project_block(block: Block) -> None:
        rows, ids = _found_rows(lookup, got, block)
        if not len(rows):
            return
        got[ids] = True
        if 2 * len(rows) >= block.n:
            projected = projections(block.vectors, direction)[rows]
        else:
            projected = projections(block.vectors[rows], direction)
        # A vector with NaN or inf projects to a non-finite value, one of zeros to 0.0:
        # only those few rows need a look at the whole vector.
        for at in np.flatnonzero(~np.isfinite(projected) | (projected == 0)).tolist():
            if vector_problem(block.vectors[rows[at]]):
                refused.append(block.key(int(rows[at])))
                projected[at] = np.nan
        values[ids] = projected

    # One thread reads and checks blocks, another projects them: SQLite's reads, CRC-32,
    # einsum and searchsorted all release the GIL. One projecting thread takes the blocks
    # in order, so the first block still wins; at most READ_AHEAD blocks wait.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="legend-project") as pool:
        pending: deque[Future[None]] = deque()
        for block in _space_blocks(conn, space_id, lookup, with_vectors=True):
            pending.append(pool.submit(project_block, block))
            if len(pending) >= READ_AHEAD:
                pending.popleft().result()
        while pending:
            pending.popleft().result()
    ok = got & ~np.isnan(values)
    return Projections(values[lookup.inverse], ok[lookup.inverse], refused)


# --- writing ----------------------------------------------------------------------------------


def _check_width(conn: Connection, space_id: int, dim: int) -> None:
    stored = conn.scalar(select(BLOCKS.c.dim).where(BLOCKS.c.space_id == space_id).limit(1))
    if stored is not None and stored != dim:
        raise ValueError(f"this space caches {stored}-wide vectors; refusing {dim}-wide ones")


def insert_block(conn: Connection, space_id: int, keys: Sequence[bytes], matrix: np.ndarray) -> int:
    """Insert one block and its index rows exactly as given (no check of the values:
    :func:`write_block` is the checked way in); returns the block's id.

    Raises:
        LostRace: An index row was already taken (roll the transaction back).
    """
    row = encode_block(keys, matrix)
    block_id = conn.execute(insert(BLOCKS), {"space_id": space_id, **row}).inserted_primary_key[0]
    # Ascending keys (the block's order): two writers lock index entries in one order.
    conn.execute(
        insert_or_skip(conn, KEYS),
        [
            {"space_id": space_id, "key": key, "block_id": block_id, "row_no": i}
            for i, key in enumerate(keys)
        ],
    )
    won = conn.scalar(select(func.count()).where(KEYS.c.block_id == block_id))
    if won != len(keys):
        raise LostRace(f"{len(keys) - won} of {len(keys)} keys were cached by another writer")
    return block_id


def write_block(conn: Connection, space_id: int, keys: Sequence[bytes], matrix: np.ndarray) -> int:
    """Cache one packed block (see :func:`pack`) in the caller's transaction.

    Keys already cached are left out: the vector cached first stays. Returns the number
    of vectors written.

    Raises:
        LostRace: A concurrent writer cached one of the keys after the check: roll the
            transaction back and call again (the check then leaves that key out).
        ValueError: The space holds vectors of another width.
    """
    present: set[bytes] = set()
    for chunk in chunks(list(keys), BULK_IN_CHUNK):
        query = select(KEYS.c.key).where(KEYS.c.space_id == space_id, KEYS.c.key.in_(chunk))
        present.update(bytes(k) for k in conn.scalars(query))
    keep = [i for i, key in enumerate(keys) if key not in present]
    if not keep:
        return 0
    _check_width(conn, space_id, matrix.shape[1])
    insert_block(conn, space_id, [keys[i] for i in keep], matrix[keep])
    return len(keep)


def forget(conn: Connection, space_id: int, keys: Sequence[bytes]) -> int:
    """Drop cached vectors in the caller's transaction; returns how many were cached.

    Each block holding one is replaced by a block of its other rows (blocks never
    change, invariant 2).

    Raises:
        LostRace: See :func:`write_block` (roll back and call again).
    """
    doomed = {bytes(k) for k in keys}
    where = _probe(conn, space_id, list(doomed))
    dropped = 0
    for block_id in sorted(where):
        query = select(*_block_columns(True)).where(BLOCKS.c.id == block_id)
        row = conn.execute(query).one_or_none()
        if row is None:
            continue
        block = _decode(row, True)
        keep = [r for r in range(block.n) if block.key(r) not in doomed]
        dropped += block.n - len(keep)
        conn.execute(delete(KEYS).where(KEYS.c.block_id == block_id))
        conn.execute(delete(BLOCKS).where(BLOCKS.c.id == block_id))
        if keep:
            insert_block(conn, space_id, [block.key(r) for r in keep], block.vectors[keep])
    return dropped
