#!/usr/bin/env python3
"""How many bytes of SQLite log (WAL) one group commit of a fleet writes,
for the daemon's table layout and the alternatives to it.

A model of the daemon's `deltas` table, not the daemon: N origins (agents)
each add K deltas of 60 bytes to every group commit, as the fleet bench's
agents do. Each commit's growth of the log is measured (no checkpoints, so
nothing is reused; synchronous off, since only bytes are counted), and the
mean over the second half of the commits is printed, once each origin has
a few pages of history. It uses the system's libsqlite3 (the one spookd
links), through Python's sqlite3 module.

    python3 bench/sqlite-layout.py              1,000 origins, 3 and 10 deltas each per commit
    python3 bench/sqlite-layout.py --origins 200
"""
import argparse
import os
import random
import sqlite3
import tempfile

MERGE_EVERY = 16

# The daemon's table (Sources/SpookStore/SQLite.swift).
BY_ORIGIN = [
    "CREATE TABLE deltas(origin INTEGER NOT NULL, seq INTEGER NOT NULL, block INTEGER NOT NULL,"
    " body BLOB NOT NULL, refused TEXT, PRIMARY KEY(origin, seq)) WITHOUT ROWID",
    "CREATE INDEX deltas_block ON deltas(block)",
]


def by_block(table):
    """A table of the same rows in commit order."""
    return (f"CREATE TABLE {table}(block INTEGER NOT NULL, origin INTEGER NOT NULL, seq INTEGER NOT NULL,"
            " body BLOB NOT NULL, refused TEXT, PRIMARY KEY(block, origin, seq)) WITHOUT ROWID")


STAGED = f"staged, merged every {MERGE_EVERY} commits"
LAYOUTS = {
    "by origin (spookd)": BY_ORIGIN,
    # Rows in commit order, found by origin through an index.
    "by block, index by origin": [by_block("deltas"), "CREATE UNIQUE INDEX deltas_origin ON deltas(origin, seq)"],
    # Rows in commit order and nothing keyed by origin on disk: an origin's
    # deltas would be found through an index kept elsewhere.
    "by block only": [by_block("deltas")],
    # The daemon's table, fed through a staging table keyed by block: every
    # MERGE_EVERY commits the staged rows move into it in one statement, in
    # origin order, inside that commit (an LSM's first level).
    STAGED: BY_ORIGIN + [by_block("staged")],
    # The same, with the staged rows also indexed by origin, so that reads by
    # origin (catch-up) find them without scanning the staging table.
    f"{STAGED}, staged rows indexed by origin":
        BY_ORIGIN + [by_block("staged"), "CREATE UNIQUE INDEX staged_origin ON staged(origin, seq)"],
}


def commit_bytes(layout, page, origins, per_commit, commits, rng):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "layout.db")
        db = sqlite3.connect(path, isolation_level=None)
        db.execute(f"PRAGMA page_size={page}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute("PRAGMA synchronous=OFF")
        for sql in LAYOUTS[layout]:
            db.execute(sql)
        seq = [0] * origins
        grown = []
        for block in range(1, commits + 1):
            rows = []
            for origin in range(origins):
                for _ in range(per_commit):
                    seq[origin] += 1
                    rows.append((block, origin, seq[origin], rng.randbytes(60)))
            db.execute("BEGIN")
            if layout.startswith(STAGED):
                db.executemany("INSERT INTO staged(block, origin, seq, body) VALUES (?, ?, ?, ?)", rows)
                if block % MERGE_EVERY == 0:
                    db.execute("INSERT INTO deltas(origin, seq, block, body, refused)"
                               " SELECT origin, seq, block, body, refused FROM staged ORDER BY origin, seq")
                    db.execute("DELETE FROM staged")
            else:
                db.executemany("INSERT INTO deltas(block, origin, seq, body) VALUES (?, ?, ?, ?)", rows)
            before = os.path.getsize(path + "-wal")
            db.execute("COMMIT")
            grown.append(os.path.getsize(path + "-wal") - before)
        db.close()
    tail = grown[commits // 2:]
    return sum(tail) / len(tail)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--origins", type=int, default=1000)
    parser.add_argument("--commits", type=int, default=64)
    args = parser.parse_args()
    rng = random.Random(1)
    print(f"SQLite {sqlite3.sqlite_version}, {args.origins} origins, 60-byte deltas, "
          f"mean of commits {args.commits // 2 + 1}-{args.commits}")
    print()
    print("| layout | page | deltas per origin per commit | new data per commit | log per commit | log / data |")
    print("|---|---|---|---|---|---|")
    for per_commit in (3, 10):
        data = args.origins * per_commit * 60
        for layout in LAYOUTS:
            for page in (4096, 1024):
                log = commit_bytes(layout, page, args.origins, per_commit, args.commits, rng)
                print(f"| {layout} | {page} | {per_commit} | {data / 1e3:.0f} kB | {log / 1e3:.0f} kB | {log / data:.1f} |")


if __name__ == "__main__":
    main()
