"""The relations index on both engines: idempotent adds, page lookups, removal, pins."""

from __future__ import annotations

from bridge.db.relation import ANNOTATION, REDACTION, REPLACE, THREAD, Relation, RelationStore
from bridge.matrix.relations import is_timeline_message, relations_in, reply_target


async def test_relation_store(db) -> None:
    store = RelationStore(db)
    rows = [
        Relation("$e1", REPLACE, "!r", "@a:x", "$m1", None, 10),
        Relation("$r1", ANNOTATION, "!r", "@b:x", "$m1", "👍", 11),
        Relation("$r2", ANNOTATION, "!r", "@a:x", "$m1", "👍", 12),
        Relation("$t1", THREAD, "!r", "@b:x", "$m2", None, 13),
        Relation("$t2", THREAD, "!r", "@b:x", "$m2", None, 14),
    ]
    assert [await store.add(r) for r in rows] == [True] * 5
    assert await store.add(rows[0]) is False  # a replayed transaction
    about = await store.about(["$m1", "$m2", "$nothing"])
    assert sorted(r.event_id for r in about) == ["$e1", "$r1", "$r2", "$t1", "$t2"]
    assert await store.about(["$m1"], (REPLACE,)) == [rows[0]]
    assert [r.event_id for r in await store.annotations_by("$m1", ["@a:x"], "👍")] == ["$r2"]
    assert await store.annotations_by("$m1", ["@c:x"], "👍") == []
    assert (await store.latest_in_thread("$m2")).event_id == "$t2"
    await store.add(Relation("$x", REDACTION, "!r", "@a:x", "$r2", None, 15, "$m1"))
    await store.remove_event("$r2")
    assert await store.of_event("$r2") == []
    assert (await store.get("$x", REDACTION)).parent == "$m1"
    assert await store.pins(["!r"]) == {}
    await store.set_pins("!r", ["$m1"])
    await store.set_pins("!r", ["$m1", "$m2"])
    assert await store.pins(["!r", "!other"]) == {"!r": ["$m1", "$m2"]}


def test_what_counts_as_a_message() -> None:
    message = {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "hi"}}
    edit = {"type": "m.room.message", "event_id": "$e", "sender": "@a:x", "content": {
        "body": "* hi", "m.relates_to": {"rel_type": "m.replace", "event_id": "$m"}}}  # fmt: skip
    thread = {"type": "m.room.message", "content": {"body": "t", "m.relates_to": {
        "rel_type": "m.thread", "event_id": "$m", "is_falling_back": True,
        "m.in_reply_to": {"event_id": "$m"}}}}  # fmt: skip
    reply = {"type": "m.room.message", "content": {"body": "r", "m.relates_to": {
        "m.in_reply_to": {"event_id": "$m"}}}}  # fmt: skip
    reaction = {"type": "m.reaction", "content": {"m.relates_to": {
        "rel_type": "m.annotation", "event_id": "$m", "key": "👍"}}}  # fmt: skip
    redacted = {"type": "m.room.message", "content": {}}
    state = {"type": "m.room.message", "state_key": "", "content": {"body": "x"}}
    assert is_timeline_message(message) and is_timeline_message(reply)
    for other in (edit, thread, reaction, redacted, state):
        assert not is_timeline_message(other)
    assert relations_in(edit) == [(REPLACE, "$m", None)]
    assert relations_in(thread) == [(THREAD, "$m", None)]  # the fallback is no reply
    assert relations_in(reply) == [("m.in_reply_to", "$m", None)]
    assert relations_in(reaction) == [(ANNOTATION, "$m", "👍")]
    assert reply_target(thread["content"]) is None and reply_target(reply["content"]) == "$m"
    too_long = {"type": "m.reaction", "content": {"m.relates_to": {
        "rel_type": "m.annotation", "event_id": "$m", "key": "x" * 101}}}  # fmt: skip
    assert relations_in(too_long) == []
