"""The body cache: the homeserver's copy of an event wins over the send path's own."""

from __future__ import annotations

from bridge.chat.service import EventCache


def test_the_send_paths_copy_never_replaces_the_homeservers() -> None:
    cache = EventCache(size=10)
    from_homeserver = {"event_id": "$e", "origin_server_ts": 1000, "content": {"body": "hi"}}
    made_here = {"event_id": "$e", "origin_server_ts": 1003, "content": {"body": "hi"}}
    # The transaction brought the event back while the send path was still indexing it.
    cache.put(from_homeserver)
    cache.put(made_here, made_here=True)
    assert cache.get("$e") is from_homeserver
    # Without a homeserver copy yet, the send path's copy is kept until one arrives.
    cache.put({"event_id": "$f", "origin_server_ts": 5}, made_here=True)
    assert cache.get("$f") == {"event_id": "$f", "origin_server_ts": 5}
    cache.put({"event_id": "$f", "origin_server_ts": 4})
    assert cache.get("$f") == {"event_id": "$f", "origin_server_ts": 4}


def test_the_cache_keeps_the_newest_events_within_its_size() -> None:
    cache = EventCache(size=2)
    for name in ("$a", "$b", "$c"):
        cache.put({"event_id": name})
    assert cache.get("$a") is None and cache.get("$b") and cache.get("$c")
    cache.bypass = True  # invalidations may be missed: nothing is served from memory
    assert cache.get("$c") is None
