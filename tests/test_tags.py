"""jivocore_tags: tag records, tagging clients and conversations, rename/recolour/delete
everywhere at once, counts, and who may do what."""

from __future__ import annotations

import pytest
from crmkit import crm_desk

import jivocore_tags as tags
from jivocore import Client, ConflictError, Conversation, HasAny, PermissionDenied


@pytest.fixture
def desk(tmp_path):
    with crm_desk("sqlite", tmp_path) as desk:
        yield desk


def test_tag_from_a_conversation_tags_it_and_its_client(desk):
    ann = desk.add_operator("Ann", presence="online")
    message = desk.receive("web", "v1", "hello")
    conversation = desk.accept(message.conversation_id, ann.id)
    tagged = tags.tag_conversation(desk, conversation.id, " big   order ", ann.id)
    assert tagged.tags == {"big order"}
    assert desk.client(conversation.client_id).tags == {"big order"}
    tags.untag_conversation(desk, conversation.id, "big order", ann.id)
    assert desk.conversation(conversation.id).tags == frozenset()
    assert desk.client(conversation.client_id).tags == {"big order"}  # the client keeps it
    [use] = tags.list_tags(desk)
    assert (use.tag.name, use.clients, use.conversations) == ("big order", 1, 0)


def test_rename_recolour_and_delete_reach_every_tagged_entity(desk, monkeypatch):
    monkeypatch.setattr(tags, "BATCH", 3)  # several batches
    boss = desk.add_operator("Boss", role="manager")
    clients = [desk.add_client(f"c{i}") for i in range(8)]
    for client in clients:
        tags.tag_client(desk, client.id, "vip", boss.id)
    tags.tag_client(desk, clients[0].id, "red", boss.id)
    tags.create_tag(desk, "blue", boss.id, colour="#0000FF")
    with pytest.raises(ConflictError):
        tags.rename_tag(desk, "vip", "blue", boss.id)
    renamed = tags.rename_tag(desk, "vip", "gold", boss.id)
    assert renamed.name == "gold"
    with desk.reading() as tx:
        assert tx.count(Client, {"tags": HasAny({"vip"})}) == 0
        assert tx.count(Client, {"tags": HasAny({"gold"})}) == 8
        assert tx.get(Client, clients[0].id).tags == {"gold", "red"}
    assert tags.recolour_tag(desk, "gold", "#FFD700", boss.id).colour == "#ffd700"
    tags.delete_tag(desk, "gold", boss.id)
    assert [u.tag.name for u in tags.list_tags(desk)] == ["blue", "red"]
    with desk.reading() as tx:
        assert tx.count(Client, {"tags": HasAny({"gold"})}) == 0
    [event] = desk.events({"type": "tag_renamed"}).items
    assert event.data["clients"] == 8


def test_operators_tag_only_what_they_see_and_only_managers_manage_tags(desk):
    ann = desk.add_operator("Ann", presence="online")
    stranger = desk.add_client("not Ann's")
    with pytest.raises(PermissionDenied):
        tags.tag_client(desk, stranger.id, "vip", ann.id)
    mine = desk.add_client("Ann's", responsible_id=ann.id)
    tags.tag_client(desk, mine.id, "vip", ann.id)
    with pytest.raises(PermissionDenied):
        tags.rename_tag(desk, "vip", "gold", ann.id)
    message = desk.receive("web", "v2", "hi")
    tags.tag_conversation(desk, message.conversation_id, "new", ann.id)  # the inbox is everyone's
    desk.accept(message.conversation_id, ann.id)
    desk.close(message.conversation_id, ann.id)
    bob = desk.add_operator("Bob")
    with pytest.raises(PermissionDenied):
        tags.tag_conversation(desk, message.conversation_id, "x", bob.id)
    assert desk.get(Conversation, message.conversation_id).tags == {"new"}
