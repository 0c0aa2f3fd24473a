"""Client CSV export (jivocore_csv): filters, encodings, delimiters, neutralised cells, the
command, and export-then-import round trips (Hypothesis)."""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from csvkit import content, csv_desk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jivocore_crm as crm
import jivocore_tags as tags
from jivocore import Role
from jivocore.cli import make_cli
from jivocore_csv import cell_text, export_clients, import_clients, read_cell


def rows_of(data: bytes, encoding: str = "utf-8-sig", delimiter: str = ",") -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(encoding), newline=""), delimiter=delimiter))


def test_export_writes_the_clients_matching_the_filters_with_everything(tmp_path):
    with csv_desk(tmp_path) as desk:
        boss = desk.add_operator("Boss", email="boss@desk.io", role=Role.MANAGER)
        ann = desk.add_operator("Ann", email="ann@desk.io")
        maria = crm.add_client(
            desk,
            ann.id,
            "=Maria",
            emails=["m@x.org", "m2@x.org"],
            phones=["+34612345678"],
            status="lead",
            custom={"plan": "gold", "email": "not a contact"},
        )
        tags.tag_client(desk, maria.id, "vip", ann.id)
        crm.add_client(desk, boss.id, "Other", status="customer")
        out = io.BytesIO()
        assert export_clients(desk, out, boss.id, crm.ClientFilter(tags={"vip"})) == 1
        data = out.getvalue()
        assert data.startswith(b"\xef\xbb\xbf")
        header, row = rows_of(data)
        assert header == [
            "jivocore_id",
            "external_id",
            "name",
            "email",
            "phone",
            "status",
            "responsible",
            "tags",
            "created",
            "plan",
            "custom:email",
        ]
        assert row[:8] == [
            maria.id,
            "",
            "'=Maria",
            "m@x.org, m2@x.org",
            "'+34612345678",
            "lead",
            "ann@desk.io",
            "vip",
        ]
        assert row[9:] == ["gold", "not a contact"]
        # An operator sees only their own clients.
        out = io.BytesIO()
        assert export_clients(desk, out, ann.id, encoding="utf-8", delimiter=";") == 1
        assert not out.getvalue().startswith(b"\xef\xbb\xbf")
        assert rows_of(out.getvalue(), "utf-8", ";")[1][2] == "'=Maria"
        # Free text goes through the CRM's search.
        out = io.BytesIO()
        assert export_clients(desk, out, boss.id, crm.ClientFilter(text="Other")) == 1


def test_export_then_import_gives_the_same_clients(tmp_path):
    with csv_desk(tmp_path) as desk:
        boss = desk.add_operator("Boss", email="boss@desk.io", role=Role.MANAGER)
        for i in range(2500):
            c = crm.add_client(
                desk, boss.id, f"Client {i}", emails=[f"c{i}@x.org"], custom={"n": str(i)}
            )
            if i % 3 == 0:
                tags.tag_client(desk, c.id, f"t{i % 5}", boss.id)
        path = tmp_path / "out.csv"
        export_clients(desk, path, boss.id)
        expected = content(desk)
        # Into the same desk: every row finds its client and changes nothing.
        again = import_clients(desk, path)
        assert (again.created, again.updated, again.unchanged) == (0, 0, 2500)
    with csv_desk(tmp_path) as other:
        other.add_operator("Boss", email="boss@desk.io", role=Role.MANAGER)
        report = import_clients(other, path)
        assert report.created == 2500 and not report.errors
        assert content(other) == expected


def test_cells_are_neutralised_and_read_back_exactly():
    for text in ["=1+2", "+44", "-x", "@a", "\tt", "\rr", "'=x", "''+y", "'plain", "", "x"]:
        assert read_cell(cell_text(text)) == text
        assert not cell_text(text).startswith(("=", "+", "-", "@", "\t", "\r"))


def test_the_export_clients_command(tmp_path):
    database = str(tmp_path / "desk.db")
    runner = CliRunner()
    cli = make_cli()
    source = tmp_path / "in.csv"
    source.write_text("name,email,status\nAna,a@x.org,lead\nBo,b@x.org,new\n")
    assert runner.invoke(cli, ["--db", database, "import-clients", str(source)]).exit_code == 0
    from jivocore import HelpDesk

    with HelpDesk.open(database) as desk:
        boss = desk.add_operator("Boss", role=Role.MANAGER)
    out = tmp_path / "out.csv"
    result = runner.invoke(
        cli,
        [
            "--db",
            database,
            "export-clients",
            str(out),
            "--operator",
            boss.id,
            "--status",
            "lead",
            "--delimiter",
            "tab",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1 clients written" in result.output
    assert rows_of(out.read_bytes(), delimiter="\t")[1][2] == "Ana"


# --- round trips --------------------------------------------------------------------------------

# Any Unicode text but NUL (the core refuses it) and lone surrogates (not text: no encoding
# writes them, and SQLite cannot store them).
chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
text = st.text(chars, max_size=20)
keys = st.text(chars, min_size=1, max_size=12)
values = st.text(chars, min_size=1, max_size=20)
tricky = st.sampled_from(["=1+2", "a,b;c\td|e", 'say "hi"', "two\nlines", "\r\n", "'=x", "-"])
clients = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.one_of(text, tricky),
            "custom": st.dictionaries(keys, st.one_of(values, tricky), max_size=3),
            "status": st.sampled_from(crm.DEFAULT_STATUSES),
            "tags": st.frozensets(st.sampled_from(["vip", "gold", "new lead"]), max_size=2),
            "email": st.booleans(),
        }
    ),
    max_size=6,
)


@pytest.mark.parametrize(
    ("delimiter", "encoding"), [(",", "utf-8-sig"), (";", "utf-8"), ("\t", "utf-16")]
)
@given(drawn=clients)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_round_trip_any_clients(delimiter, encoding, drawn):
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        with csv_desk(tmp_path) as desk:
            boss = desk.add_operator("Boss", email="boss@desk.io", role=Role.MANAGER)
            for i, c in enumerate(drawn):
                made = crm.add_client(
                    desk,
                    boss.id,
                    c["name"],
                    status=c["status"],
                    custom=c["custom"],
                    emails=[f"c{i}@x.org"] if c["email"] else [],
                )
                for tag in c["tags"]:
                    tags.tag_client(desk, made.id, tag, boss.id)
            path = tmp_path / "out.csv"
            export_clients(desk, path, boss.id, delimiter=delimiter, encoding=encoding)
            expected = content(desk)
        with csv_desk(tmp_path) as other:
            other.add_operator("Boss", email="boss@desk.io", role=Role.MANAGER)
            report = import_clients(other, path)
            assert not report.errors, report.errors
            assert report.format is not None and report.format.delimiter == delimiter
            assert content(other) == expected
            # Run again, it finds every client (by the other desk's id) and changes nothing.
            again = import_clients(other, path)
            assert again.created == again.updated == 0
            assert content(other) == expected
