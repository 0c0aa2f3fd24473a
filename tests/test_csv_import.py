"""Client CSV import (jivocore_csv): formats, headers, normalisation, matching, duplicates, the
plan, rejected rows, refusals, the hooks, the command, and a SIGKILL in the middle."""

from __future__ import annotations

import csv
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from csvkit import content, count, csv_desk, identities, write

import jivocore_csv
from jivocore import Client, Event, HelpDesk, JivoError, ValidationError, hookimpl
from jivocore.cli import make_cli
from jivocore_csv import CsvRefused, import_clients
from jivocore_tags import Tag

ROOT = Path(__file__).resolve().parent.parent


def clients(desk: HelpDesk) -> list[Client]:
    with desk.reading() as tx:
        return sorted(tx.select(Client), key=lambda c: c.name)


# --- formats ----------------------------------------------------------------------------------

ROWS = (
    'name,email,phone\r\n"Lopez, Maria",maria@Example.COM,+34 612 345 678\r\n'
    '"Say ""hi""\nthere",b@b.org,\r\n'
)


@pytest.mark.parametrize(
    ("encoding", "delimiter"),
    [("utf-8", ","), ("utf-8-sig", ";"), ("utf-16", "\t"), ("cp1252", "|"), ("latin-1", ";")],
)
def test_reads_what_spreadsheets_write(tmp_path, encoding, delimiter):
    text = ROWS.replace(",", delimiter) if delimiter != "," else ROWS
    text = text.replace(f'"Lopez{delimiter} Maria"', f'"Lopez{delimiter} María"')
    path = write(tmp_path / "c.csv", text, encoding)
    with csv_desk(tmp_path) as desk:
        report = import_clients(desk, path)
        assert (report.created, report.rejected) == (2, 0), report.errors
        maria, hi = clients(desk)
        assert maria.name == f"Lopez{delimiter} María"
        assert maria.emails == ("maria@example.com",)
        assert maria.phones == ("+34612345678",)
        assert hi.name == 'Say "hi"\nthere'
        assert report.format is not None and report.format.delimiter == delimiter


def test_lf_and_crlf_and_a_given_encoding_and_delimiter(tmp_path):
    path = write(tmp_path / "c.csv", "name;email\nJosé;j@x.org\r\nAnn;a@x.org\n", "cp1252")
    with csv_desk(tmp_path) as desk:
        report = import_clients(desk, path, encoding="cp1252", delimiter=";")
        assert report.created == 2
        assert [c.name for c in clients(desk)] == ["Ann", "José"]


def test_headers_in_portuguese_and_spanish_first_and_last_names_and_custom_fields(tmp_path):
    with csv_desk(tmp_path) as desk:
        ann = desk.add_operator("Ann", email="ann@desk.io")
        path = write(
            tmp_path / "c.csv",
            "Primeiro nome,Sobrenome,Correo electrónico,Teléfono,Celular,Responsável,"
            "Etiquetas,Estado,Plano\n"
            "Maria,Lopez,m@x.org,+55 11 98765-4321,+34 612 345 678,ANN@desk.io,vip; gold,"
            "Lead,ouro\n",
        )
        report = import_clients(desk, path)
        assert report.created == 1, report.errors
        (maria,) = clients(desk)
        assert maria.name == "Maria Lopez"
        assert maria.phones == ("+5511987654321", "+34612345678")
        assert maria.responsible_id == ann.id and ann.id in maria.involved
        assert maria.tags == {"vip", "gold"}
        assert maria.status == "lead"
        assert maria.custom == {"Plano": "ouro"}
        with desk.reading() as tx:
            assert {t.name for t in tx.select(Tag)} == {"vip", "gold"}


def test_an_explicit_mapping(tmp_path):
    path = write(tmp_path / "c.csv", "Cliente X,Contato,Notes\nAcme,a@acme.io,n\n")
    with csv_desk(tmp_path) as desk:
        import_clients(
            desk, path, mapping={"Cliente X": "name", "Contato": "email", "Notes": "custom:note"}
        )
        (acme,) = clients(desk)
        assert (acme.name, acme.emails, acme.custom) == ("Acme", ("a@acme.io",), {"note": "n"})
        with pytest.raises(CsvRefused, match="Nope"):
            import_clients(desk, path, mapping={"Nope": "name"})


# --- normalisation and row errors -------------------------------------------------------------


def test_invalid_values_are_errors_of_their_row_and_never_stop_good_rows(tmp_path):
    path = write(
        tmp_path / "c.csv",
        "name,email,phone,status\n"
        "Good,g@x.org,+1 650 253 0000,\n"
        "Bad mail,not-an-email,,\n"
        "Bad phone,,12345,\n"
        "Local phone,,(11) 98765-4321,\n"
        "Bad status,,,vip\n"
        "Also good,  ok@X.ORG ,,customer\n",
    )
    with csv_desk(tmp_path) as desk:
        rejected = tmp_path / "rejected.csv"
        report = import_clients(desk, path, rejected=rejected)
        assert (report.created, report.rejected) == (2, 4)
        assert [(e.record, e.line, e.column) for e in report.errors] == [
            (2, 3, "email"),
            (3, 4, "phone"),
            (4, 5, "phone"),
            (5, 6, "status"),
        ]
        assert "country code" in report.errors[2].reason
        assert "choose one of" in report.errors[3].reason
        assert [c.emails for c in clients(desk)] == [("ok@x.org",), ("g@x.org",)]
        # The rejected rows, fixed, import as they are (the `error` column is ignored).
        with open(rejected, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["name", "email", "phone", "status", "error"]
        assert rows[1][:2] == ["Bad mail", "not-an-email"] and "email address" in rows[1][4]
        rows[1][1], rows[2][2], rows[3][2], rows[4][3] = "bad@x.org", "", "+55 11 98765-4321", ""
        with open(rejected, "w", encoding="utf-8-sig", newline="") as f:
            csv.writer(f).writerows(rows)
        again = import_clients(desk, rejected, region="BR")
        assert (again.created, again.rejected) == (4, 0), again.errors
        assert count(desk) == 6


def test_a_region_reads_local_numbers(tmp_path):
    path = write(tmp_path / "c.csv", "name,phone\nAna,(11) 98765-4321\n")
    with csv_desk(tmp_path, csv_phone_region="BR") as desk:
        import_clients(desk, path)
        assert clients(desk)[0].phones == ("+5511987654321",)


# --- matching, duplicates, the plan ----------------------------------------------------------


def test_matches_existing_clients_by_external_id_then_email_then_phone(tmp_path):
    with csv_desk(tmp_path) as desk:
        by_hand = desk.add_client("By hand", emails=["Hand@Example.com"], phones=["+34612345678"])
        write(tmp_path / "a.csv", "id,name,email\nX1,Ext,ext@x.org\n")
        import_clients(desk, tmp_path / "a.csv")
        path = write(
            tmp_path / "b.csv",
            "id,name,email,phone\n"
            "X1,Ext renamed,,\n"  # external id
            ",Hand 2,Hand@example.com,\n"  # email (the domain's case ignored)
            ",Hand 3,,+34 612 345 678\n",  # phone
        )
        plan = import_clients(desk, path, dry_run=True)
        assert (plan.created, plan.updated, plan.merged) == (0, 2, 1)
        before = count(desk)
        report = import_clients(desk, path)
        assert (report.created, report.updated, report.merged) == (0, 2, 1)
        assert count(desk) == before == 2
        assert desk.get(Client, by_hand.id).name == "Hand 3"
        assert {c.name for c in clients(desk)} == {"Ext renamed", "Hand 3"}


def test_the_match_order_is_configurable(tmp_path):
    with csv_desk(tmp_path) as desk:
        a = desk.add_client("A", emails=["a@x.org"])
        b = desk.add_client("B", phones=["+34612345678"])
        path = write(tmp_path / "c.csv", "name,email,phone\nNew,a@x.org,+34612345678\n")
        import_clients(desk, path, match=["phone", "email"])
        assert desk.get(Client, b.id).name == "New" and desk.get(Client, a.id).name == "A"


def test_in_file_duplicates_merge_by_default_or_are_reported(tmp_path):
    text = (
        "name,email,phone,plan\n"
        "Ann,ann@x.org,,gold\n"
        "Ann L,ann@X.ORG,+34 612 345 678,\n"
        "Other,,+34612345678,silver\n"
    )
    path = write(tmp_path / "c.csv", text)
    with csv_desk(tmp_path) as desk:
        report = import_clients(desk, path)
        assert (report.created, report.merged) == (1, 2)
        (ann,) = clients(desk)
        assert ann.name == "Other" and ann.phones == ("+34612345678",)
        assert ann.custom == {"plan": "silver"}
    with csv_desk(tmp_path) as desk:
        report = import_clients(desk, path, duplicates="report", rejected=tmp_path / "r.csv")
        # A reported duplicate is not imported, so its phone is new when row 3 brings it.
        assert (report.created, report.rejected) == (2, 1)
        assert [(e.record, e.reason) for e in report.errors] == [
            (2, "duplicate of record 1 (same email ann@x.org)")
        ]


def test_the_plan_equals_the_run_and_the_run_equals_the_change_in_the_database(tmp_path):
    rng = random.Random(5)
    lines = ["name,email,phone,status"]
    for i in range(2500):
        if i % 50 == 7:
            lines.append(f"Bad {i},bad{i},,")
        elif i % 20 == 3:
            lines.append(f"Dup {i},user{i - 1}@x.org,,")
        else:
            lines.append(f"User {i},user{i}@x.org,+3461{rng.randrange(10**7):07d},lead")
    path = write(tmp_path / "c.csv", "\n".join(lines) + "\n")
    with csv_desk(tmp_path, csv_batch_size=300) as desk:
        for i in range(0, 400, 7):  # some exist already
            desk.add_client(f"Old {i}", emails=[f"user{i}@x.org"])
        before = count(desk)
        plan = import_clients(desk, path, dry_run=True)
        assert count(desk) == before and identities(desk) == 0
        report = import_clients(desk, path)
        for field in ("rows", "created", "updated", "unchanged", "merged", "rejected"):
            assert getattr(plan, field) == getattr(report, field), field
        assert plan.errors == report.errors
        assert count(desk) - before == report.created
        with desk.reading() as tx:
            changed = sum(1 for c in tx.select(Client) if c.version > 1)
        assert changed == report.updated
        again = import_clients(desk, path)
        assert (again.created, again.updated, again.unchanged) == (
            0,
            0,
            plan.rows - plan.rejected - plan.merged,
        )


def test_rows_with_no_key_are_found_again_by_their_content(tmp_path):
    path = write(tmp_path / "c.csv", "name,plan\nAnn,gold\nBob,\nAnn,gold\n")
    with csv_desk(tmp_path) as desk:
        first = import_clients(desk, path)
        assert (first.created, first.merged) == (2, 1)
        second = import_clients(desk, path)
        assert (second.created, second.unchanged) == (0, 2)
        assert count(desk) == 2


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\xef\xbb\xbf\r\n\r\n", "empty"),
        (b"PK\x03\x04\x14\x00\x06\x00" + bytes(200), "ZIP"),
        (bytes(range(256)) * 4, "binary"),
        (b"foo,bar\n1,2\n", "no recognisable column"),
        (b'name,email\nAnn,a@x.org\n"Bob,b@x.org\nCid,c@x.org\n', "record 2 .line 3.*not closed"),
    ],
)
def test_refusals_write_nothing(tmp_path, data, message):
    path = tmp_path / "c.csv"
    path.write_bytes(data)
    with csv_desk(tmp_path) as desk:
        with pytest.raises(CsvRefused, match=message) as info:
            import_clients(desk, path)
        assert isinstance(info.value, ValidationError) and info.value.message
        assert count(desk) == 0 and count(desk, Event) == 0


def test_a_field_over_the_limit_and_too_many_rows_are_refused(tmp_path):
    path = write(tmp_path / "c.csv", "name,email\nAnn,a@x.org\n" + f"{'x' * 500},b@x.org\n")
    with csv_desk(tmp_path, csv_max_field_chars=100) as desk:
        with pytest.raises(CsvRefused, match=r"record 2 .line 3., column 1.*over the limit"):
            import_clients(desk, path)
        assert count(desk) == 0
    with csv_desk(tmp_path, csv_max_rows=1) as desk:
        with pytest.raises(CsvRefused, match="more than 1 rows"):
            import_clients(desk, path)
        assert count(desk) == 0


def test_an_unterminated_quote_stops_at_the_record_limit_not_the_end_of_the_file(tmp_path):
    path = tmp_path / "big.csv"
    with open(path, "w") as f:
        f.write('name,email\nAnn,a@x.org\n"Bob,b@x.org\n')
        for i in range(200_000):
            f.write(f"Person {i},p{i}@x.org\n")
    with csv_desk(tmp_path, csv_max_record_chars=10_000) as desk:
        started = time.perf_counter()
        with pytest.raises(CsvRefused, match=r"record 2 .line 3.") as info:
            import_clients(desk, path)
        assert info.value.record == 2 and info.value.line == 3
        assert time.perf_counter() - started < 2
        assert count(desk) == 0


# --- the hooks ------------------------------------------------------------------------------


def test_hook_register_csv_columns(tmp_path):
    class Loyalty:
        @hookimpl
        def jivocore_register_csv_columns(self, register):
            register("points", ("pontos", "puntos"))

        @hookimpl
        def jivocore_prepare_csv_rows(self, rows):
            for row in rows:
                if "points" in row["cells"]:
                    row["client"]["custom"]["points"] = str(int(row["cells"]["points"]) * 10)

    path = write(tmp_path / "c.csv", "nombre,puntos\nAna,7\n")
    with csv_desk(tmp_path) as desk:
        desk.pm.register(Loyalty(), name="loyalty")
        import_clients(desk, path)
        assert clients(desk)[0].custom == {"points": "70"}

    class Clash:
        @hookimpl
        def jivocore_register_csv_columns(self, register):
            register("mail2", ("E-mail",))

    with csv_desk(tmp_path) as desk:
        desk.pm.register(Clash(), name="clash")
        with pytest.raises(JivoError, match=r"clash.*E-mail"):
            import_clients(desk, path)


def test_hook_prepare_csv_rows(tmp_path):
    calls = []

    class Plugin:
        @hookimpl
        def jivocore_prepare_csv_rows(self, desk, work, rows):
            calls.append((work is None, [r["record"] for r in rows]))
            for row in rows:
                if row["client"]["name"] == "Reject me":
                    row["errors"].append(("name", "no, thanks"))
                row["client"]["custom"]["batch"] = str(len(calls))

    path = write(
        tmp_path / "c.csv",
        "name,email\n" + "".join(f"P{i},p{i}@x.org\n" for i in range(5)) + "Reject me,r@x.org\n",
    )
    with csv_desk(tmp_path, csv_batch_size=4) as desk:
        desk.pm.register(Plugin(), name="plugin")
        plan = import_clients(desk, path, dry_run=True)
        report = import_clients(desk, path)
        assert calls == [
            (True, [1, 2, 3, 4]),
            (True, [5, 6]),
            (False, [1, 2, 3, 4]),
            (False, [5, 6]),
        ]
        assert plan.rejected == report.rejected == 1
        assert report.errors[0].reason == "no, thanks" and report.errors[0].record == 6
        assert sorted(c.custom["batch"] for c in clients(desk)) == ["3"] * 4 + ["4"]


# --- the command ----------------------------------------------------------------------------


def test_the_import_clients_command(tmp_path):
    path = write(tmp_path / "c.csv", "nombre;correo\nAna;ana@x.org\nBad;nope\n")
    database = str(tmp_path / "desk.db")
    runner = CliRunner()
    cli = make_cli()
    result = runner.invoke(cli, ["--db", database, "import-clients", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert (
        "would create 1" in result.output and "record 2 (line 3), column 'correo'" in result.output
    )
    result = runner.invoke(cli, ["--db", database, "import-clients", str(path)])
    assert "did create 1" in result.output and "reject 1" in result.output
    assert (tmp_path / "c.csv.rejected.csv").exists()
    empty = write(tmp_path / "e.csv", "")
    result = runner.invoke(cli, ["--db", database, "import-clients", str(empty)])
    assert result.exit_code == 1 and "CsvRefused: the file is empty" in result.output


# --- a kill in the middle -------------------------------------------------------------------

IMPORT = """
import sys
import jivocore_crm, jivocore_csv, jivocore_sqlite, jivocore_tags
from jivocore import HelpDesk
desk = HelpDesk(plugins=[jivocore_sqlite, jivocore_crm, jivocore_tags, jivocore_csv],
                settings={"database": sys.argv[1], "csv_batch_size": 2000})
report = jivocore_csv.import_clients(desk, sys.argv[2])
print(report.summary(), flush=True)
desk.shutdown()
"""


def make_big_file(path: Path, rows: int) -> None:
    """`rows` rows, 1% bad, 5% repeating an earlier row's email with other values."""
    rng = random.Random(200)
    with open(path, "w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(["name", "email", "phone", "status", "tags", "plan"])
        for i in range(rows):
            roll = rng.random()
            if roll < 0.01:
                out.writerow([f"Bad {i}", f"bad{i}@", "", "", "", ""])
            elif roll < 0.06 and i > 10:
                j = rng.randrange(i)
                out.writerow([f"Again {j}", f"u{j}@x.org", "", "customer", "dup", f"p{i}"])
            else:
                out.writerow(
                    [f"User {i}", f"u{i}@x.org", f"+3461{i:07d}", "lead", f"t{i % 7}", f"p{i}"]
                )


def run_import(database: Path, path: Path) -> str:
    process = subprocess.Popen(
        [sys.executable, "-c", IMPORT, str(database), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = process.communicate(timeout=900)
    assert process.returncode == 0, err
    return out


def desk_on(database: Path) -> HelpDesk:
    import jivocore_crm
    import jivocore_sqlite
    import jivocore_tags

    return HelpDesk(
        plugins=[jivocore_sqlite, jivocore_crm, jivocore_tags, jivocore_csv],
        settings={"database": str(database)},
    )


@pytest.mark.slow
def test_killed_mid_import_and_run_again_equals_a_clean_run(tmp_path):
    path = tmp_path / "big.csv"
    make_big_file(path, 200_000)
    clean, crashed = tmp_path / "clean.db", tmp_path / "crashed.db"
    run_import(clean, path)
    # Kill it once clients are being written (not while the file is still being checked).
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", IMPORT, str(crashed), str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while True:
        time.sleep(0.2)
        assert process.poll() is None, "the import ended before it could be killed"
        desk = desk_on(crashed) if crashed.exists() else None
        written = count(desk) if desk is not None else 0
        if desk is not None:
            desk.shutdown()
        if written >= 20_000:
            break
        assert time.perf_counter() - started < 600
    process.send_signal(signal.SIGKILL)
    process.wait()
    with desk_on(crashed) as desk:
        partial = count(desk)
        assert 20_000 <= partial < 190_000
    out = run_import(crashed, path)
    assert "reject" in out
    with desk_on(clean) as a, desk_on(crashed) as b:
        assert count(a) == count(b)
        assert content(a) == content(b)
        with a.reading() as tx:
            tags_a = sorted(t.name for t in tx.select(Tag))
        with b.reading() as tx:
            tags_b = sorted(t.name for t in tx.select(Tag))
        assert tags_a == tags_b
