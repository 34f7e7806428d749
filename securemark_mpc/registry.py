"""The model owner's customer registry: who got which codeword, in one SQLite file.

The codewords are part of the owner's secret (with them and the key a thief could aim
at specific bits), so the file is created with mode 0600. Every write runs in one
``BEGIN IMMEDIATE`` transaction, so concurrent ``securemark issue`` calls cannot race.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

MAX_NAME_LENGTH = 100
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    idx INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    length INTEGER NOT NULL,
    codeword BLOB NOT NULL,
    copy_sha256 TEXT NOT NULL,
    issued_at TEXT NOT NULL
)
"""


class RegistryError(ValueError):
    """A registry request that cannot be honoured (bad name, duplicate, mismatch)."""


@dataclass(frozen=True)
class Customer:
    """One registered customer. Equality ignores the codeword array (fixed by name and index)."""

    name: str
    index: int
    codeword: np.ndarray = field(compare=False)
    copy_sha256: str
    issued_at: str  # ISO-8601, UTC


def validate_name(name: str) -> str:
    """Check a customer name; names become file names ``copies/NAME.pt``."""
    if not isinstance(name, str) or not name:
        raise RegistryError("customer name must be a non-empty string")
    if len(name) > MAX_NAME_LENGTH:
        raise RegistryError(f"customer name is longer than {MAX_NAME_LENGTH} characters")
    if not name.isprintable() or name != name.strip():
        raise RegistryError(
            f"customer name {name!r} must be printable, without leading/trailing spaces"
        )
    if "/" in name or "\\" in name or set(name) == {"."}:
        raise RegistryError(f"customer name {name!r} must not be a path (no '/', '\\', '.', '..')")
    return name


def _check_codeword(codeword: np.ndarray) -> np.ndarray:
    bits = np.asarray(codeword)
    if bits.ndim != 1 or bits.size == 0 or not np.isin(bits, (0, 1)).all():
        raise RegistryError("codeword must be a non-empty 1-D array of 0/1 bits")
    return bits.astype(np.uint8)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _customer(row: tuple) -> Customer:
    idx, name, length, blob, sha, issued = row
    bits = np.unpackbits(np.frombuffer(blob, dtype=np.uint8), count=length)
    bits.setflags(write=False)
    return Customer(name=name, index=idx, codeword=bits, copy_sha256=sha, issued_at=issued)


_COLUMNS = "idx, name, length, codeword, copy_sha256, issued_at"


class Registry:
    """Customers and their codewords in ``path`` (normally ``RUN/registry.sqlite``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # Create the file ourselves so that it is never, even briefly, group/world readable.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(self.path, 0o600)
        with self._transaction() as conn:
            conn.execute(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, isolation_level=None)) as conn:
            yield conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def add(
        self, *, name: str, codeword: np.ndarray, copy_sha256: str, reissue: bool = False
    ) -> Customer:
        """Register ``name`` with its codeword and the SHA-256 of the copy it was given.

        A known name is refused unless ``reissue``. Reissuing keeps the customer's index
        and codeword (older leaked copies must still trace to them) and only updates the
        copy hash and time, so the codeword passed must equal the registered one.
        """
        validate_name(name)
        bits = _check_codeword(codeword)
        if not _SHA256.fullmatch(copy_sha256):
            raise RegistryError("copy_sha256 must be 64 lowercase hex digits")
        with self._transaction() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM customers WHERE name = ?", (name,)
            ).fetchone()
            if row is not None:
                old = _customer(row)
                if not reissue:
                    raise RegistryError(f"customer {name!r} is already registered")
                if not np.array_equal(old.codeword, bits):
                    raise RegistryError(f"reissue for {name!r} must keep its registered codeword")
                conn.execute(
                    "UPDATE customers SET copy_sha256 = ?, issued_at = ? WHERE idx = ?",
                    (copy_sha256, _now(), old.index),
                )
                idx = old.index
            else:
                lengths = {r[0] for r in conn.execute("SELECT DISTINCT length FROM customers")}
                if lengths and lengths != {bits.size}:
                    raise RegistryError(
                        f"codeword has {bits.size} bits, registry holds {lengths.pop()}-bit codewords"
                    )
                idx = conn.execute(
                    "INSERT INTO customers (idx, name, length, codeword, copy_sha256, issued_at) "
                    "VALUES ((SELECT COALESCE(MAX(idx) + 1, 0) FROM customers), ?, ?, ?, ?, ?)",
                    (name, bits.size, np.packbits(bits).tobytes(), copy_sha256, _now()),
                ).lastrowid
            return _customer(
                conn.execute(f"SELECT {_COLUMNS} FROM customers WHERE idx = ?", (idx,)).fetchone()
            )

    def get(self, name: str) -> Customer | None:
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM customers WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else _customer(row)

    def customers(self) -> list[Customer]:
        """All customers, ordered by index."""
        with self._connect() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM customers ORDER BY idx").fetchall()
        return [_customer(row) for row in rows]

    def codeword_matrix(self) -> tuple[list[str], np.ndarray]:
        """Names and the n × m uint8 codeword matrix, in index order; (0, 0) when empty."""
        customers = self.customers()
        if not customers:
            return [], np.zeros((0, 0), dtype=np.uint8)
        return [c.name for c in customers], np.stack([c.codeword for c in customers])

    def next_index(self) -> int:
        """Index the next new customer will get (indices start at 0 and are never reused)."""
        with self._connect() as conn:
            (nxt,) = conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM customers").fetchone()
        return int(nxt)
