from __future__ import annotations

import re

from bridge.ids import IdMapper, escape_localpart, unescape_localpart

IDS = IdMapper("example.org", "crm_{userid}", "crm_{projectid}", "crmbot")


def test_puppet_ids_round_trip() -> None:
    for crm_id in ("64b7f0c2e4b0a1a2b3c4d5e6", "42", "Alice Smith", "ü/x=y"):
        mxid = IDS.puppet_mxid(crm_id)
        assert re.fullmatch(r"@[a-z0-9._=/-]+:example\.org", mxid), mxid
        assert IDS.crm_user_id_of(mxid) == crm_id
        assert re.fullmatch(IDS.user_namespace_regex(), mxid)


def test_foreign_ids_are_not_ours() -> None:
    assert IDS.crm_user_id_of("@alice:example.org") is None
    assert IDS.crm_user_id_of("@crm_1:other.org") is None
    assert IDS.project_id_of("#general:example.org") is None
    assert IDS.project_id_of(IDS.project_alias("p-1")) == "p-1"


def test_a_reserved_alias_is_ours_and_no_projects() -> None:
    alias = IDS.reserved_alias("bridge-probe")
    assert re.fullmatch(IDS.alias_namespace_regex(), alias)
    assert IDS.project_id_of(alias) is None
    # The project whose id spells it has an alias of its own.
    assert IDS.project_alias("=bridge-probe") != alias
    assert IDS.project_id_of(IDS.project_alias("=bridge-probe")) == "=bridge-probe"
    assert IDS.project_id_of("#crm_P1:example.org") is None  # not a spelling we make


def test_escaping_is_reversible() -> None:
    assert escape_localpart("AB c") == "=41=42=20c"
    assert unescape_localpart(escape_localpart("ÄÖ=x")) == "ÄÖ=x"


def test_url_ids_round_trip() -> None:
    from bridge.ids import (
        conversation_id_for_room,
        event_id_for_message,
        message_id_for_event,
        room_id_for_conversation,
    )

    for room_id in ("!AbC-_12xyz", "!old:example.org", "!xstartswithx"):
        conversation_id = conversation_id_for_room(room_id)
        assert re.fullmatch(r"[A-Za-z0-9_-]+", conversation_id)
        assert room_id_for_conversation(conversation_id) == room_id
    assert conversation_id_for_room("!AbC-_12xyz") == "AbC-_12xyz"
    for event_id in ("$ev-_1", "$ev:example.org"):
        assert event_id_for_message(message_id_for_event(event_id)) == event_id
    assert room_id_for_conversation("../etc") is None
    assert event_id_for_message("x!!") is None
