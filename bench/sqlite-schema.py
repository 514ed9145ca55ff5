#!/usr/bin/env python3
"""SQLite cost per reservation row of the project's own schema, and of variants of it.

Writes what a Reserve batch writes (a ledger entry, a reservation, a stored answer per row, in
batches of 30 rows per transaction) straight through Python's sqlite3 module, without the server,
so the figure is the database's own cost (plus a few microseconds of Python per row). Each variant
gets its own database file under a temporary directory, is prefilled, then measured in rounds
that alternate between the variants, so they share the machine's moments of noise.

Usage: bench/sqlite-schema.py [--prefill BATCHES] [--rounds N] [--batches BATCHES]
Prints microseconds per row for each variant and round. Every loop is bounded.
"""
import argparse
import hashlib
import os
import pathlib
import random
import sqlite3
import tempfile
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parent.parent
MIGRATIONS = sorted((ROOT / "server/migrations/sqlite").glob("*.sql"))
ROWS_PER_BATCH = 30
SERVICE_POINTS = 16


def schema(without_rowid=False, drop_index=None):
    text = "\n".join(p.read_text() for p in MIGRATIONS)
    if without_rowid:
        text = text.replace(
            "created_ms  BIGINT NOT NULL\n);", "created_ms  BIGINT NOT NULL\n) WITHOUT ROWID;"
        )
        text = text.replace(
            "PRIMARY KEY (office_id, seq)\n);", "PRIMARY KEY (office_id, seq)\n) WITHOUT ROWID;"
        )
    if drop_index:
        text = text.replace(f"CREATE INDEX {drop_index}", f"-- CREATE INDEX {drop_index}")
    return text


def random_request_id(now_ms, rnd):
    return str(uuid.UUID(int=rnd.getrandbits(128)))


def time_ordered_request_id(now_ms, rnd):
    # Like a UUIDv7: the time first, so new ids land at the end of the primary-key index.
    return "%012x-%020x" % (now_ms, rnd.getrandbits(64))


VARIANTS = {
    "schema as is": dict(),
    "page_size 1024": dict(pragmas=["PRAGMA page_size = 1024"]),
    "page_size 2048": dict(pragmas=["PRAGMA page_size = 2048"]),
    "WITHOUT ROWID ledger+idempotency": dict(without_rowid=True),
    "no reservations_by_office_day": dict(drop_index="reservations_by_office_day"),
    "cache_size 64 MiB": dict(pragmas=["PRAGMA cache_size = -65536"]),
    "mmap_size 256 MiB": dict(pragmas=["PRAGMA mmap_size = 268435456"]),
    "time-ordered request ids": dict(request_id=time_ordered_request_id),
}


class Variant:
    def __init__(self, directory, name, pragmas=(), without_rowid=False, drop_index=None,
                 request_id=random_request_id):
        path = os.path.join(directory, name.replace(" ", "_").replace("/", "_") + ".db")
        self.db = sqlite3.connect(path, isolation_level=None)
        for pragma in pragmas:  # page_size must come before the file is first written
            self.db.execute(pragma)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")  # the server's setting (plus its group fsync)
        self.db.execute("PRAGMA wal_autocheckpoint = 16384")
        self.db.executescript(schema(without_rowid, drop_index))
        self.request_id = request_id
        self.seq = 0
        self.rnd = random.Random(7)

    def run(self, batches):
        """Writes `batches` batches; returns microseconds per row spent in the database calls."""
        spent = 0.0
        for b in range(batches):
            now = 1_764_000_000_000 + self.seq
            ledger, reservations, answers = [], [], []
            for i in range(ROWS_PER_BATCH):
                self.seq += 1
                rid = "R%012x%012x" % (now, self.rnd.getrandbits(48))
                nik_hash = hashlib.sha256(str(self.rnd.random()).encode()).hexdigest()
                chain = hashlib.sha256(str(self.seq).encode()).hexdigest()
                sp = "sp%d" % (i % SERVICE_POINTS)
                ledger.append(("3201", self.seq, 1, now, "2026-11-29", "counter:bench", 0, 1,
                               500, self.seq, sp, rid, "", "", "", "320101******0001", chain, chain))
                reservations.append((rid, "3201", self.seq, sp, "bench", "2026-11-29", nik_hash,
                                     "320101******0001", 4, 0, 1, "HELD", now, now + 1_800_000,
                                     0, 0))
                answers.append((self.request_id(now, self.rnd), "Reserve", chain,
                                self.rnd.randbytes(180), now))
            start = time.perf_counter()
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT INTO ledger VALUES (%s)" % ", ".join("?" * 18), ledger)
            self.db.executemany(
                "INSERT INTO reservations VALUES (%s)" % ", ".join("?" * 16), reservations)
            self.db.executemany("INSERT INTO idempotency VALUES (?, ?, ?, ?, ?)", answers)
            self.db.execute("COMMIT")
            spent += time.perf_counter() - start
            if b % 50 == 49:  # the server's background checkpoint, every ~500 ms under load
                self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        return spent / (batches * ROWS_PER_BATCH) * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefill", type=int, default=3000, help="batches written before measuring")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=300, help="batches per variant and round")
    args = parser.parse_args()
    for value, name in ((args.prefill, "--prefill"), (args.rounds, "--rounds"),
                        (args.batches, "--batches")):
        if not 1 <= value <= 100_000:
            parser.error(f"{name} must be 1..=100000")
    with tempfile.TemporaryDirectory(prefix="blangko-sqlite-schema-") as directory:
        variants = {name: Variant(directory, name, **v) for name, v in VARIANTS.items()}
        for v in variants.values():
            v.run(args.prefill)
        results = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, v in variants.items():
                results[name].append(v.run(args.batches))
        print(f"SQLite {sqlite3.sqlite_version}, {ROWS_PER_BATCH} rows per transaction, "
              f"{args.prefill * ROWS_PER_BATCH} rows prefilled; microseconds per row by round:")
        for name, figures in results.items():
            print(f"  {name:<34} " + "  ".join(f"{f:6.1f}" for f in figures))


if __name__ == "__main__":
    main()
