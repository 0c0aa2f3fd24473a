"""The README's examples run as written."""

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
EXAMPLES = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_the_readme_has_its_two_examples():
    assert len(EXAMPLES) == 2
    assert all(len(example.strip().splitlines()) <= 30 for example in EXAMPLES)


def test_the_embedding_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(EXAMPLES[0], "README.md", "exec"), {})
    assert "to Maria: Let me check!" in capsys.readouterr().out
    assert (tmp_path / "helpdesk.db").exists()


def test_the_plugin_example_runs_and_its_hooks_work(tmp_path):
    from jivocore import FakeClock, HelpDesk, Vetoed
    from jivocore.testing import RecordingChannel, channel_plugin

    namespace: dict = {}
    exec(compile(EXAMPLES[1], "README.md", "exec"), namespace)
    plugin = namespace["OfficeHours"]()
    clock = FakeClock()  # 09:00 UTC
    desk = HelpDesk.open(
        str(tmp_path / "d.db"), plugins=[plugin, channel_plugin(RecordingChannel())], clock=clock
    )
    ann = desk.add_operator("Ann", presence="online")
    bob = desk.add_operator("Bob", presence="online")
    conversation = desk.receive("web", "v1", "hi").conversation_id
    desk.accept(conversation, ann.id)
    assert plugin.accepted == 1
    desk.transfer(conversation, ann.id, bob.id)  # 09:00: allowed
    late = desk.receive("web", "v2", "hello?").conversation_id
    clock.advance(10 * 3600)  # 19:00
    desk.accept(late, ann.id)
    with pytest.raises(Vetoed, match=r"OfficeHours.*office hours"):
        desk.transfer(late, ann.id, bob.id)
    assert desk.conversation(late).owner_id == ann.id
