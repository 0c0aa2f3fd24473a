"""Fuzzing the client CSV import: whatever the bytes, the import either imports whole rows or
refuses with a JivoError that has a message, and never writes part of a row."""

from __future__ import annotations

import tempfile
from pathlib import Path

from csvkit import csv_desk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jivocore import Client, ClientIdentity, JivoError
from jivocore_csv import import_clients

HEADERS = [b"name,email,phone\n", b"nome;e-mail;telefone\r\n", b"\xef\xbb\xbfname\tid\n", b""]
pieces = st.one_of(
    st.binary(max_size=60),
    st.sampled_from(
        [
            b'"',
            b",",
            b";",
            b"\t",
            b"\n",
            b"\r\n",
            b"\x00",
            b"\xff\xfe",
            b"a@b.co",
            b"+34612345678",
            b"=cmd",
            b"'",
            b"\xc3\xa9",
            b"\xe9",
        ]
    ),
)
files = st.builds(
    lambda header, body: header + b"".join(body),
    st.sampled_from(HEADERS),
    st.lists(pieces, max_size=40),
)


def whole(client: Client) -> bool:
    """A row written whole: the client and the key identity of every contact it has."""
    return bool(client.name or client.emails or client.phones or client.custom or client.tags)


@given(data=st.one_of(files, st.binary(max_size=400)))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_bytes_import_whole_rows_or_refuse_with_a_message(data):
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        path = tmp_path / "fuzz.csv"
        path.write_bytes(data)
        with csv_desk(tmp_path, csv_max_record_chars=200) as desk:
            try:
                report = import_clients(desk, path, rejected=tmp_path / "rejected.csv")
            except JivoError as exc:
                assert str(exc) and exc.message
                with desk.reading() as tx:
                    assert tx.count(Client) == 0 and tx.count(ClientIdentity) == 0
                return
            with desk.reading() as tx:
                stored = list(tx.select(Client))
                keys = {(i.channel, i.external_id): i.client_id for i in tx.select(ClientIdentity)}
            assert len(stored) == report.created
            assert (
                report.created
                + report.updated
                + report.unchanged
                + report.merged
                + (report.rejected)
                == report.rows
            )
            for client in stored:
                assert all(keys.get(("csv:email", e)) == client.id for e in client.emails)
                assert all(keys.get(("csv:phone", p)) == client.id for p in client.phones)
                assert client.id in keys.values()
