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


def test_escaping_is_reversible() -> None:
    assert escape_localpart("AB c") == "=41=42=20c"
    assert unescape_localpart(escape_localpart("ÄÖ=x")) == "ÄÖ=x"
