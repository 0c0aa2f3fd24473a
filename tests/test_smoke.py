"""The fixtures give a working desk."""


def test_a_message_reaches_the_inbox(desk):
    ann = desk.add_operator("Ann", presence="online")
    message = desk.receive("web", "visitor-1", "hello")
    assert [c.id for c in desk.inbox(ann.id)] == [message.conversation_id]
