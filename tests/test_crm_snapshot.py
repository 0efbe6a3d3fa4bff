"""The pure parts of the directory: snapshot validation, desired room state, member diffs."""

from __future__ import annotations

import pytest

from bridge.crm.plan import MemberOp, member_ops
from bridge.crm.rooms import Member, creators_have_implicit_power, power_levels
from bridge.crm.snapshot import InvalidSnapshot, parse_snapshot

ROLES = ["admin", "manager", "employee"]
PUPPETS = r"@crm_.+:localhost"


def test_valid_snapshot_accepts_mongo_and_integer_ids() -> None:
    snapshot = parse_snapshot(
        {
            "users": [
                {"_id": "65a1", "name": "A", "email": "a@x", "role": "admin",
                 "matrixId": "@alice:example.org"},
                {"id": 7, "name": "B", "email": "b@x", "role": "employee", "active": False},
            ],
            "projects": [{"id": "p", "name": "P", "members": ["65a1", 7], "createdBy": "65a1"}],
        },
        ROLES,
        PUPPETS,
    )  # fmt: skip
    assert snapshot.users["65a1"].matrix_id == "@alice:example.org"
    assert snapshot.users["7"].active is False
    assert snapshot.projects["p"].members == ("65a1", "7")


def test_linked_accounts_must_be_real_and_unique() -> None:
    with pytest.raises(InvalidSnapshot) as err:
        parse_snapshot(
            {
                "users": [
                    {"id": "a", "name": "A", "email": "a@x", "role": "admin", "matrixId": "bob"},
                    {"id": "b", "name": "B", "email": "b@x", "role": "admin",
                     "matrixId": "@crm_c:localhost"},
                    {"id": "c", "name": "C", "email": "c@x", "role": "admin",
                     "matrixId": "@x:hs.org"},
                    {"id": "d", "name": "D", "email": "d@x", "role": "admin",
                     "matrixId": "@x:hs.org"},
                ],
                "projects": [],
            },
            ROLES,
            PUPPETS,
        )  # fmt: skip
    problems = err.value.extra["problems"]
    assert len(problems) == 3
    assert "not a Matrix user id" in problems[0]
    assert "is run by the bridge" in problems[1]
    assert "already linked to user 'c'" in problems[2]


def test_power_levels_from_roles_and_archiving() -> None:
    bot = "@crmbot:localhost"
    live = power_levels({"@a:x": 100, "@b:x": 0, "@c:x": 50}, False, bot, True)
    assert live["users"] == {"@a:x": 100, "@c:x": 50}  # v12: the creator is implicit
    assert live["events_default"] == 0 and live["invite"] == 100 and live["kick"] == 100
    archived = power_levels({"@a:x": 100}, True, bot, True)
    assert archived["users"] == {} and archived["events_default"] == 100
    old_room = power_levels({"@a:x": 100}, False, bot, False)
    assert old_room["users"][bot] == 100
    assert creators_have_implicit_power("12") and not creators_have_implicit_power("10")
    # Any member may pin (issue 19); nobody in an archived room.
    assert power_levels({}, False, bot, True, 0)["events"]["m.room.pinned_events"] == 0
    assert archived["events"]["m.room.pinned_events"] == 100


def test_member_ops_only_touch_what_differs() -> None:
    bot = "@crmbot:localhost"
    desired = {
        "@crm_a:localhost": Member("a", True),
        "@crm_b:localhost": Member("b", True),
        "@alice:hs.org": Member("a", False),
        "@crm_new:localhost": Member("new", True),
    }
    current = {
        bot: "join",
        "@crm_a:localhost": "join",
        "@crm_b:localhost": "invite",  # invited before a crash: only the join is left
        "@alice:hs.org": "invite",  # a linked account decides when to join
        "@crm_gone:localhost": "join",
        "@crm_off:localhost": "join",
        "@stranger:hs.org": "invite",
        "@crm_left:localhost": "leave",
    }
    ops = member_ops(desired, current, {"@crm_off:localhost"}, bot, {"@crm_off:localhost": "off"})
    assert [(op.kind, op.mxid) for op in ops] == [
        ("join", "@crm_b:localhost"),
        ("invite", "@crm_new:localhost"),
        ("join", "@crm_new:localhost"),
        ("kick", "@crm_gone:localhost"),
        ("leave", "@crm_off:localhost"),
        ("kick", "@stranger:hs.org"),
    ]
    assert isinstance(ops[0], MemberOp)


def test_people_fields_name_derived_or_split() -> None:
    from bridge.crm.snapshot import parse_user

    problems: list[str] = []
    parts = parse_user(
        {"id": 1, "firstName": "Ann", "lastName": "Lee", "email": "a@x", "role": "admin",
         "position": "CTO", "profileImage": "https://p/a.png", "companyId": 42},
        "u", problems, ROLES,
    )  # fmt: skip
    assert parts is not None and not problems
    assert (parts.name, parts.first_name, parts.last_name) == ("Ann Lee", "Ann", "Lee")
    assert (parts.position, parts.profile_image, parts.company_id) == (
        "CTO",
        "https://p/a.png",
        "42",
    )
    whole = parse_user({"id": 2, "name": "Mary Ann Smith", "email": "m@x", "role": "admin"},
                       "u", problems, ROLES)  # fmt: skip
    assert whole is not None and (whole.first_name, whole.last_name) == ("Mary", "Ann Smith")
    assert whole.company_id is None and not problems
    parse_user({"id": 3, "email": "n@x", "role": "admin"}, "u", problems, ROLES)
    parse_user({"id": 4, "name": "X", "email": "n@x", "role": "admin", "companyId": True},
               "v", problems, ROLES)  # fmt: skip
    assert problems == [
        "u.name: required, a non-empty string (or firstName/lastName)",
        "v.companyId: must be a non-empty string or an integer",
    ]
