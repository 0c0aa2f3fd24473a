"""The state machine over the whole command set: 200 runs of up to 50 steps against the model,
and the machine's own checks: it runs apart from jivocore.lifecycle, and it notices a desk that
breaks a rule."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from jivocore import ClientBlocked, FakeClock, HelpDesk, InvalidTransition, hookimpl
from jivocore.testing import channel_plugin, stateful
from jivocore.testing.stateful import HelpDeskMachine

TestHelpDesk = HelpDeskMachine.TestCase
TestHelpDesk.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)


def test_the_model_is_written_apart_from_the_lifecycle_module() -> None:
    tree = ast.parse(inspect.getsource(stateful))
    imported = {
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    } | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert imported, "the check reads the module's imports"
    assert not [name for name in imported if "lifecycle" in name]


class _VetoReceive:
    @hookimpl
    def jivocore_veto_transition(self, command: str) -> str | None:
        return "the inbox is switched off" if command == "receive" else None


class _DeskThatTakesNoMessages(HelpDeskMachine):
    def make_desk(self, clock: FakeClock) -> HelpDesk:
        desk = super().make_desk(clock)
        desk.shutdown()
        assert self._tmp is not None
        return HelpDesk.open(
            str(Path(self._tmp.name) / "desk.db"),
            clock=clock,
            plugins=[channel_plugin(self.channel), _VetoReceive()],
        )


def test_the_machine_notices_a_desk_that_breaks_a_rule() -> None:
    with pytest.raises(AssertionError, match="receive: the desk refused with Vetoed"):
        run_state_machine_as_test(
            _DeskThatTakesNoMessages,
            settings=settings(
                max_examples=200, stateful_step_count=50, deadline=None, database=None
            ),
        )


# The machine found these two; DESIGN section 4 says what should happen. Reported to the lead:
# both fail (and so does TestHelpDesk) until the core refuses them.


def test_join_from_the_archive_refuses_a_blocked_client(desk: HelpDesk) -> None:
    """DESIGN 4: "a blocked client has no open conversation"; join must not reopen one."""
    ann = desk.add_operator("Ann", presence="online")
    message = desk.receive("web", "visitor-1", "hello")
    desk.accept(message.conversation_id, ann.id)
    desk.block(str(message.author_id), ann.id)
    with pytest.raises(ClientBlocked):
        desk.join(message.conversation_id, ann.id)
    assert desk.conversation(message.conversation_id).state == "closed"


def test_join_from_the_archive_refuses_while_the_client_has_another_open_chat(
    desk: HelpDesk,
) -> None:
    """A client has one open conversation per channel; reopening a second one is a wrong-state
    command (InvalidTransition), not a write conflict that five retries cannot resolve."""
    ann = desk.add_operator("Ann", presence="online", role="manager")
    first = desk.receive("web", "visitor-1", "hello")
    desk.client_left(first.conversation_id)
    second = desk.receive("web", "visitor-1", "hello again")
    with pytest.raises(InvalidTransition):
        desk.join(first.conversation_id, ann.id)
    assert desk.conversation(first.conversation_id).state == "closed"
    assert desk.conversation(second.conversation_id).state == "inbox"
