"""Client CSV import: rows per second of the dry run and the real import, and peak RSS, beside
raw `csv.reader` + `sqlite3.executemany` into the same tables, in the same run.

Each measurement runs in its own subprocess (a fresh database, `resource.getrusage` for the
peak RSS of that process alone). The raw side writes what the import writes for a new client
(the clients row, its FTS row, and its email and phone key identities) in one transaction per
1000 rows, with no parsing of emails or phones, no matching and no duplicate checks: the
floor any importer pays.

    python bench/csv_import.py                 # 100,000 and 1,000,000 rows
    python bench/csv_import.py --rows 20000    # one size, quickly
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_file(path: Path, rows: int) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(["Nome", "E-mail", "Telefone", "Status", "Plano"])
        for i in range(rows):
            out.writerow(
                [
                    f"Cliente {i}",
                    f"cliente{i}@Example.com",
                    f"+55 11 9{i % 10**8:08d}",
                    "lead",
                    f"plan {i % 7}",
                ]
            )


def desk(database: str):  # type: ignore[no-untyped-def]
    import jivocore_crm
    import jivocore_csv
    import jivocore_sqlite
    import jivocore_tags
    from jivocore import HelpDesk

    return HelpDesk(
        plugins=[jivocore_sqlite, jivocore_crm, jivocore_tags, jivocore_csv],
        settings={"database": database, "csv_max_rows": 10_000_000},
    )


def engine(path: str, database: str, dry_run: bool) -> dict[str, float]:
    import jivocore_csv

    d = desk(database)
    started = time.perf_counter()
    report = jivocore_csv.import_clients(d, path, dry_run=dry_run)
    elapsed = time.perf_counter() - started
    d.shutdown()
    assert report.rejected == 0 and report.created == report.rows, report.summary()
    return {"rows": report.rows, "seconds": elapsed}


def raw(path: str, database: str) -> dict[str, float]:
    from jivocore import new_id
    from jivocore.clock import SystemClock

    desk(database).shutdown()  # the same schema
    conn = sqlite3.connect(database, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    clock = SystemClock()
    started = time.perf_counter()
    now = clock.now()
    created = now.isoformat()
    rows = 0
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        while True:
            batch = [r for _, r in zip(range(1000), reader, strict=False)]
            if not batch:
                break
            conn.execute("BEGIN IMMEDIATE")
            clients, identities = [], []
            for name, email, phone, status, plan in batch:
                cid = new_id(now)
                emails, phones = json.dumps([email]), json.dumps([phone])
                clients.append(
                    (
                        cid,
                        1,
                        name,
                        emails,
                        phones,
                        status,
                        None,
                        "[]",
                        "[]",
                        json.dumps({"Plano": plan}),
                        None,
                        created,
                        0,
                        None,
                    )
                )
                identities.append((new_id(now), 1, "csv:email", email, cid, created))
                identities.append((new_id(now), 1, "csv:phone", phone, cid, created))
            conn.executemany(
                "INSERT INTO clients (id, version, name, emails, phones, status, responsible_id,"
                " involved, tags, custom, block, created, open_deals, next_task_due)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                clients,
            )
            conn.executemany(
                "INSERT INTO clients_fts (rowid, name, emails, phones) SELECT rowid, name, emails,"
                " phones FROM clients WHERE id = ?",
                [(c[0],) for c in clients],
            )
            conn.executemany(
                "INSERT INTO client_identities (id, version, channel, external_id, client_id,"
                " created) VALUES (?,?,?,?,?,?)",
                identities,
            )
            conn.execute("COMMIT")
            rows += len(batch)
    elapsed = time.perf_counter() - started
    conn.close()
    return {"rows": rows, "seconds": elapsed}


def child(mode: str, path: str, database: str) -> None:
    result = raw(path, database) if mode == "raw" else engine(path, database, mode == "dry")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def measure(mode: str, path: Path, tmp: Path) -> dict[str, float]:
    database = tmp / f"{mode}-{time.monotonic_ns()}.db"
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path), str(database)],
        check=True,
        capture_output=True,
        text=True,
    )
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, action="append")
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    sizes = args.rows or [100_000, 1_000_000]
    print(
        f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} cpus"
    )
    print(
        f"{'rows':>9} {'side':<12} {'seconds':>8} {'rows/s':>9} {'peak RSS MB':>12} {'of raw':>7}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for rows in sizes:
            path = Path(tmp) / f"clients-{rows}.csv"
            make_file(path, rows)
            results = {m: measure(m, path, Path(tmp)) for m in ("raw", "dry", "import")}
            base = results["raw"]["rows"] / results["raw"]["seconds"]
            for mode, r in results.items():
                rate = r["rows"] / r["seconds"]
                print(
                    f"{rows:>9,} {mode:<12} {r['seconds']:>8.1f} {rate:>9,.0f} "
                    f"{r['peak_rss_mb']:>12.0f} {rate / base:>7.0%}"
                )


if __name__ == "__main__":
    main()
