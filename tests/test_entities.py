"""Every entity survives the converter, the storage encoding and a real SQLite file unchanged;
the validators refuse times that are naive or not UTC."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jivocore
from jivocore import CORE_ENTITY_TYPES, HelpDesk, ValidationError, make_converter
from jivocore.convert import format_time, parse_time
from jivocore.scheduler import Timer
from jivocore.testing import strategies

CONVERTER = make_converter()
ETYPES = {etype.cls: etype for etype in CORE_ENTITY_TYPES}

# Every entity in jivocore.entities, by the strategy that draws it.
ENTITIES: dict[type[Any], st.SearchStrategy[Any]] = {
    jivocore.Operator: strategies.operators(),
    jivocore.Block: strategies.blocks(),
    jivocore.Client: strategies.clients(),
    jivocore.ClientIdentity: strategies.client_identities(),
    jivocore.Ignore: strategies.ignores(),
    jivocore.Conversation: strategies.conversations(),
    jivocore.Message: strategies.messages(),
    jivocore.Event: strategies.events(),
    jivocore.Delivery: strategies.deliveries(),
    Timer: strategies.timers(),
}
STORED = [cls for cls in ENTITIES if cls in ETYPES]


def test_every_entity_has_a_strategy_and_every_stored_one_a_table() -> None:
    defined = {
        cls
        for cls in vars(jivocore.entities).values()
        if isinstance(cls, type) and attrs.has(cls) and cls.__module__ == "jivocore.entities"
    }
    assert defined | set(ETYPES) == set(ENTITIES)
    assert set(STORED) == set(ETYPES)


class _Rollback(Exception):
    """Raised to undo an example's writes, so examples never collide on ids or keys."""


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HelpDesk]:
    path: Path = tmp_path_factory.mktemp("entities") / "desk.db"
    with HelpDesk.open(str(path)) as desk:
        yield desk


@pytest.mark.parametrize("cls", list(ENTITIES), ids=lambda cls: cls.__name__)
@given(data=st.data())
def test_the_converter_round_trips(cls: type[Any], data: st.DataObject) -> None:
    entity = data.draw(ENTITIES[cls])
    assert CONVERTER.structure(CONVERTER.unstructure(entity), cls) == entity


@pytest.mark.parametrize("cls", STORED, ids=lambda cls: cls.__name__)
@given(data=st.data())
def test_the_storage_encoding_round_trips(cls: type[Any], data: st.DataObject) -> None:
    entity = data.draw(ENTITIES[cls])
    etype = ETYPES[cls]
    row = etype.encode(CONVERTER, entity)
    assert set(row) == set(etype.columns)
    assert etype.decode(CONVERTER, row) == entity
    by_position = etype.decoder(CONVERTER, by_position=True)
    assert by_position(tuple(row[name] for name in etype.columns)) == entity
    # The generated decoder reads what the converter reads.
    assert etype.decode_slowly(CONVERTER, row) == entity


@pytest.mark.parametrize("cls", STORED, ids=lambda cls: cls.__name__)
@given(data=st.data())
def test_the_generated_decoder_reads_every_stored_shape_itself(
    cls: type[Any], data: st.DataObject
) -> None:
    # Without going the converter's way, which is right but several times slower.
    def refuse(self: Any, converter: Any, row: Any) -> Any:
        raise AssertionError(f"{self.name}: the generated decoder could not read {row!r}")

    entity = data.draw(ENTITIES[cls])
    etype = ETYPES[cls]
    converter = make_converter()
    row = etype.encode(converter, entity)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(etype), "decode_slowly", refuse)
        assert etype.decoder(converter)(row) == entity
        assert etype.decoder(converter, by_position=True)(tuple(row.values())) == entity


@pytest.mark.parametrize("cls", STORED, ids=lambda cls: cls.__name__)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=50)
@given(data=st.data())
def test_a_sqlite_desk_stores_it_unchanged(
    desk: HelpDesk, cls: type[Any], data: st.DataObject
) -> None:
    entity = attrs.evolve(data.draw(ENTITIES[cls]), version=0)
    with pytest.raises(_Rollback), desk.storage.transaction() as tx:
        added = tx.add(entity)
        assert added == attrs.evolve(entity, version=1)
        assert tx.get(cls, entity.id) == added
        raise _Rollback
    with desk.reading() as tx:
        assert tx.find(cls, entity.id) is None


# --- times ------------------------------------------------------------------------------------


def _time_fields(cls: type[Any]) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [f.name for f in attrs.fields(cls) if hints[f.name] in (datetime, datetime | None)]


TIME_FIELDS = [(cls, name) for cls in ENTITIES for name in _time_fields(cls)]

not_utc = st.one_of(
    st.datetimes(),  # naive
    st.datetimes(
        timezones=st.integers(min_value=-23 * 60 + 1, max_value=23 * 60 - 1)
        .filter(bool)
        .map(lambda minutes: timezone(timedelta(minutes=minutes)))
    ),
)


def test_every_entity_with_a_time_is_checked() -> None:
    assert {cls for cls, _ in TIME_FIELDS} == set(ENTITIES)


@pytest.mark.parametrize(
    ("cls", "field"), TIME_FIELDS, ids=lambda v: v if isinstance(v, str) else v.__name__
)
@given(data=st.data(), bad=not_utc)
def test_naive_or_non_utc_times_are_refused(
    cls: type[Any], field: str, data: st.DataObject, bad: datetime
) -> None:
    entity = data.draw(ENTITIES[cls])
    with pytest.raises(ValueError, match=field):
        attrs.evolve(entity, **{field: bad})


@given(bad=st.datetimes())
def test_a_stored_time_without_a_timezone_is_refused(bad: datetime) -> None:
    with pytest.raises(ValueError, match="no timezone"):
        parse_time(bad.isoformat())


@pytest.mark.parametrize("by_position", [False, True])
def test_a_row_the_decoder_cannot_read_is_refused_by_name(by_position: bool) -> None:
    etype = ETYPES[jivocore.Conversation]
    conversation = jivocore.Conversation(
        id="c1", channel="web", client_id="k1", created=datetime.now(UTC)
    )
    row = etype.encode(CONVERTER, conversation)
    row["state"] = "archived"  # no such state
    values = tuple(row.values()) if by_position else row
    with pytest.raises(ValidationError, match="state"):
        etype.decoder(CONVERTER, by_position=by_position)(values)


def test_a_row_with_a_naive_time_does_not_decode() -> None:
    etype = ETYPES[jivocore.Operator]
    row = etype.encode(CONVERTER, jivocore.Operator(id="op", name="Ann", created=datetime.now(UTC)))
    row["created"] = "2026-01-05T09:00:00"
    with pytest.raises(ValidationError, match="created"):
        etype.decode(CONVERTER, row)


@given(at=strategies.utc_datetimes())
def test_stored_times_are_fixed_width_and_sort_as_the_instants_do(at: datetime) -> None:
    # The storage text of a time has one width for every year, so comparing the text (as SQL
    # does in filters, order and keyset pages) compares the instants.
    assert len(format_time(at)) == len("2026-01-05T09:00:00.000000+00:00")
    assert parse_time(format_time(at)) == at


@given(a=strategies.utc_datetimes(), b=strategies.utc_datetimes())
def test_stored_time_text_orders_as_the_instants(a: datetime, b: datetime) -> None:
    assert (format_time(a) < format_time(b)) == (a < b)


def test_every_registered_type_decodes_its_stored_rows_without_the_fallback(
    tmp_path: Path,
) -> None:
    # Plugins' types too (deals, tasks, tags, logins, ...), on the demo desk's real rows.
    from jivocore_webchat import WebChat
    from jivocore_webchat.cli import seed_demo

    def refuse(self: Any, converter: Any, row: Any) -> Any:
        raise AssertionError(f"{self.name}: the generated decoder could not read {row!r}")

    with HelpDesk.open(str(tmp_path / "demo.db"), plugins=[WebChat()]) as desk:
        seed_demo(desk)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(jivocore.EntityType, "decode_slowly", refuse)
            for etype in desk.entity_types.values():
                etype._decoders.clear()  # made again, with the fallback refusing
                with desk.reading() as tx:
                    assert all(attrs.has(type(e)) for e in tx.select(etype.cls)), etype.name
