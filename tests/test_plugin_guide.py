"""docs/plugin-guide.md's examples, run as CI runs them: the toy channel passes the channel
contract suite (and stays under 80 lines), the tenant storage plugin passes the storage contract
suite, and the notes extension works as the guide says."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from jivocore import HelpDesk, PermissionDenied, ValidationError
from jivocore.channels import Channel
from jivocore.testing.channels import ChannelContract
from jivocore.testing.storage import StorageContract

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
sys.path.insert(0, str(EXAMPLES))

import notes  # noqa: E402
import tenant_storage  # noqa: E402
import toy_channel  # noqa: E402


def test_the_guide_shows_each_example_whole():
    guide = (ROOT / "docs" / "plugin-guide.md").read_text()
    for example in ("toy_channel.py", "tenant_storage.py", "notes.py"):
        assert f"docs/examples/{example}" in guide
    blocks = re.findall(r"```python\n(.*?)```", guide, re.S)
    for block in blocks:
        compile(block, "plugin-guide.md", "exec")  # every snippet is valid Python


def test_the_toy_channel_is_under_80_lines():
    assert len((EXAMPLES / "toy_channel.py").read_text().splitlines()) < 80


class TestToyChannel(ChannelContract):
    def make_channel(self, tmp_path: Path) -> Channel:
        self.far_side = getattr(self, "far_side", toy_channel.FarSide())
        return toy_channel.ToyChannel(far_side=self.far_side)

    def desk_plugins(self, channel: Channel) -> list[object]:
        return [channel]

    def deliver_inbound(self, channel: Any, client_id: str, text: str, message_id: str) -> bool:
        return bool(channel.incoming(client_id, text, message_id))

    def received_outbound(self, channel: Channel) -> list[tuple[str, str]]:
        return list(self.far_side.received)

    def set_outbound_down(self, channel: Channel, down: bool) -> None:
        self.far_side.down = down


def test_the_toy_channel_reports_a_client_leaving(tmp_path):
    channel = toy_channel.ToyChannel()
    with HelpDesk.open(str(tmp_path / "d.db"), plugins=[channel]) as desk:
        desk.start_channels()
        assert channel.incoming("ann@home", "hello", "m1")
        channel.left("ann@home")
        (closed,) = desk.archive().items
        assert closed.outcome == "missed"
        desk.stop_channels()


class TestTenantStorage(StorageContract):
    def make_storage(self, tmp_path: Path) -> Any:
        tmp_path.mkdir(parents=True, exist_ok=True)
        settings = {"database": "tenant://acme", "tenant_root": str(tmp_path / "tenants")}
        return tenant_storage.jivocore_get_storage(settings)


def test_tenant_storage_answers_only_its_own_urls(tmp_path):
    settings = {"tenant_root": str(tmp_path)}
    assert tenant_storage.jivocore_get_storage({**settings, "database": "x.db"}) is None
    with pytest.raises(ValidationError):
        tenant_storage.jivocore_get_storage({**settings, "database": "tenant://../etc"})
    desk = HelpDesk(
        plugins=[tenant_storage],
        entry_points=True,
        settings={**settings, "database": "tenant://acme"},
    )
    with desk:
        desk.add_operator("Ann")
    assert (tmp_path / "acme.db").exists()


def test_notes(tmp_path):
    path = str(tmp_path / "d.db")
    with HelpDesk.open(path, plugins=[notes]) as desk:
        ann = desk.add_operator("Ann")
        bob = desk.add_operator("Bob")
        client = desk.add_client("Eve", responsible_id=ann.id)
        note = notes.add_note(desk, client.id, ann.id, "prefers email")
        assert [n.text for n in notes.notes(desk, client.id)] == ["prefers email"]
        (event,) = desk.events({"type": "note_added"}).items
        assert event.data["note_id"] == note.id
        with pytest.raises(PermissionDenied):
            notes.add_note(desk, client.id, bob.id, "who is this?")
        with pytest.raises(ValidationError):
            notes.add_note(desk, client.id, ann.id, "  ")
    result = CliRunner().invoke(notes.notes_command, [client.id, "--database", path])
    assert result.exit_code == 0 and "prefers email" in result.output
