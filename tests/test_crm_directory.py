"""Issue 3 through the admin API, checked as a plain Matrix client (Element) sees it.

Every test uses its own CRM ids on the session's Synapse and bridge. A normal Matrix
account linked to a CRM admin (``matrixId``) is the observer: the bridge invites it, it joins
from matrix-nio, and everything asserted is what the homeserver shows that account.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web
from nio import (
    AsyncClient,
    JoinResponse,
    RoomGetStateResponse,
    RoomKickResponse,
    RoomMessagesResponse,
    RoomPutStateResponse,
    RoomResolveAliasResponse,
    RoomSendError,
)

from bridge.context import (
    CONVERSATIONS,
    HOMESERVER,
    IDS,
    MATRIX,
    PROJECTS,
    ROOM_MEMBERS,
    USERS,
)
from bridge.crm.puppets import ensure_puppet
from bridge.crm.rooms import LINK_EVENT, REMOVED_REASON
from bridge.db.crm_user import CrmUser
from bridge.db.project import Project
from bridge.matrix.homeserver import MatrixError

from .conftest import unique
from .helpers import eventually, matrix_user

pytestmark = pytest.mark.integration


async def admin(
    stack: Any, method: str, path: str, body: Any = None, token: str | None = "config"
) -> tuple[int, Any]:
    headers = {}
    if token == "config":
        token = stack.config["admin_api.token"]
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, f"{stack.bridge_url}/api/admin/v1{path}", json=body, headers=headers
        ) as resp,
    ):
        return resp.status, await resp.json()


def user(name: str, role: str = "employee", **extra: Any) -> dict[str, Any]:
    return {"name": name, "email": f"{name.lower()}@example.com", "role": role, **extra}


async def put_users(stack: Any, users: dict[str, dict[str, Any]]) -> None:
    for crm_user_id, body in users.items():
        status, resp = await admin(stack, "PUT", f"/users/{crm_user_id}", body)
        assert status == 200, resp
        assert not resp["errors"], resp


async def state(client: AsyncClient, room_id: str) -> dict[tuple[str, str], dict[str, Any]]:
    resp = await client.room_get_state(room_id)
    assert isinstance(resp, RoomGetStateResponse), resp
    return {(e["type"], e.get("state_key", "")): e for e in resp.events}


async def accept_invite(client: AsyncClient, room_id: str) -> None:
    async def invited() -> bool:
        await client.sync(timeout=0)
        return room_id in client.invited_rooms

    await eventually(invited)
    assert isinstance(await client.join(room_id), JoinResponse)


def membership(st: dict, mxid: str) -> str | None:
    event = st.get(("m.room.member", mxid))
    return event["content"]["membership"] if event else None


async def project_with_observer(stack: Any, members: dict[str, dict[str, Any]], **project: Any):
    """An admin linked to a fresh normal account, plus ``members``; the observer joined."""
    observer = await matrix_user(stack.synapse, unique("el"))
    admin_id = unique("adm")
    await put_users(stack, {admin_id: user("Ada", "admin", matrixId=observer.user_id), **members})
    project_id = unique("prj")
    body = {
        "name": "Launch",
        "description": "Q3 launch",
        "emoji": "🚀",
        "color": "bg-blue-500",
        "members": [admin_id, *members],
        "createdBy": admin_id,
        **project,
    }
    status, resp = await admin(stack, "PUT", f"/projects/{project_id}", body)
    assert status == 200, resp
    assert not resp["errors"], resp
    room_id = resp["project"]["roomId"]
    await accept_invite(observer, room_id)
    return observer, admin_id, project_id, room_id


async def test_admin_api_needs_the_service_token(stack) -> None:
    status, body = await admin(stack, "GET", "/users/nobody", token=None)
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
    status, body = await admin(stack, "GET", "/users/nobody", token="wrong")
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    status, body = await admin(stack, "GET", "/users/nobody")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")


async def test_users_and_project_room_as_seen_from_element(stack) -> None:
    ids = stack.app[IDS]
    manager, employee = unique("mgr"), unique("emp")
    observer, admin_id, project_id, room_id = await project_with_observer(
        stack, {manager: user("Max", "manager"), employee: user("Eve")}
    )
    try:
        alias = ids.project_alias(project_id)
        resolved = await observer.room_resolve_alias(alias)
        assert isinstance(resolved, RoomResolveAliasResponse) and resolved.room_id == room_id
        st = await state(observer, room_id)
        assert st[("m.room.create", "")]["sender"] == ids.bot_mxid
        assert st[("m.room.name", "")]["content"]["name"] == "Launch"
        assert st[("m.room.topic", "")]["content"]["topic"] == "Q3 launch"
        assert st[("m.room.canonical_alias", "")]["content"]["alias"] == alias
        link = st[(LINK_EVENT, "")]["content"]
        assert link == {"id": project_id, "emoji": "🚀", "color": "bg-blue-500"}
        levels = st[("m.room.power_levels", "")]["content"]
        assert levels["users"] == {
            ids.puppet_mxid(admin_id): 100,
            observer.user_id: 100,
            ids.puppet_mxid(manager): 50,
        }
        assert levels["events_default"] == 0
        puppets = [ids.puppet_mxid(u) for u in (admin_id, manager, employee)]

        async def all_joined() -> bool:
            st = await state(observer, room_id)
            return all(membership(st, m) == "join" for m in [*puppets, observer.user_id])

        await eventually(all_joined)
        profile = await observer.get_profile(ids.puppet_mxid(manager))
        assert profile.displayname == "Max"
        conversation = await stack.app[CONVERSATIONS].get_by_room(room_id)
        assert conversation.project_id == project_id and conversation.kind == "project"
        members = await stack.app[ROOM_MEMBERS].of_room(room_id)
        assert {m: members.get(m) for m in puppets} == dict.fromkeys(puppets, "join")
        await eventually(lambda: _member_is(stack, room_id, observer.user_id, "join"), timeout=10)
        status, got = await admin(stack, "GET", f"/projects/{project_id}")
        assert status == 200 and got["roomId"] == room_id and got["alias"] == alias
        status, got = await admin(stack, "GET", f"/users/{manager}")
        assert status == 200 and got["role"] == "manager" and got["active"] is True
    finally:
        await observer.close()


async def _member_is(stack: Any, room_id: str, mxid: str, expected: str) -> bool:
    return await stack.app[ROOM_MEMBERS].get(room_id, mxid) == expected


async def test_rename_add_remove_promote_and_linked_accounts(stack) -> None:
    ids = stack.app[IDS]
    linked = await matrix_user(stack.synapse, unique("el"))
    stay, leave, linked_owner, newcomer = (unique(p) for p in ("st", "lv", "lo", "nw"))
    observer, admin_id, project_id, room_id = await project_with_observer(
        stack,
        {
            stay: user("Sam"),
            leave: user("Leo"),
            linked_owner: user("Lin", matrixId=linked.user_id),
        },
    )
    try:
        # The linked account is invited alongside the puppet and joins from a plain client.
        await accept_invite(linked, room_id)
        st = await state(observer, room_id)
        assert membership(st, linked.user_id) == "join"
        assert membership(st, ids.puppet_mxid(linked_owner)) == "join"

        await put_users(stack, {newcomer: user("Nia")})
        body = {
            "name": "Launch v2",
            "members": [admin_id, stay, newcomer],
            "createdBy": admin_id,
        }
        status, resp = await admin(stack, "PUT", f"/projects/{project_id}", body)
        assert status == 200 and not resp["errors"], resp
        assert resp["applied"]["projects"]["rename"] == [project_id]
        kicked = {m["mxid"] for m in resp["applied"]["kick"]}
        assert kicked == {ids.puppet_mxid(leave), ids.puppet_mxid(linked_owner), linked.user_id}

        st = await state(observer, room_id)
        assert st[("m.room.name", "")]["content"]["name"] == "Launch v2"
        for gone in (ids.puppet_mxid(leave), ids.puppet_mxid(linked_owner), linked.user_id):
            event = st[("m.room.member", gone)]
            assert event["content"]["membership"] == "leave"
            assert event["content"].get("reason") == REMOVED_REASON
            assert event["sender"] == ids.bot_mxid
        assert membership(st, ids.puppet_mxid(newcomer)) == "join"
        assert membership(st, ids.puppet_mxid(stay)) == "join"

        # Promote: employee -> manager shows as power level 50.
        await put_users(stack, {stay: user("Sam", "manager")})
        st = await state(observer, room_id)
        levels = st[("m.room.power_levels", "")]["content"]["users"]
        assert levels[ids.puppet_mxid(stay)] == 50
        assert ids.puppet_mxid(leave) not in levels
    finally:
        await observer.close()
        await linked.close()


async def test_linking_and_unlinking_an_account_invites_and_removes_it(stack) -> None:
    linked = await matrix_user(stack.synapse, unique("el"))
    member = unique("mb")
    observer, _, _, room_id = await project_with_observer(stack, {member: user("Mia")})
    try:
        await put_users(stack, {member: user("Mia", matrixId=linked.user_id)})
        await accept_invite(linked, room_id)  # invited on link, joins from a plain client
        st = await state(observer, room_id)
        assert membership(st, linked.user_id) == "join"
        levels = st[("m.room.power_levels", "")]["content"]["users"]
        assert linked.user_id not in levels  # an employee, like the puppet: level 0
        await put_users(stack, {member: user("Mia", "manager", matrixId=linked.user_id)})
        st = await state(observer, room_id)
        levels = st[("m.room.power_levels", "")]["content"]["users"]
        puppet = stack.app[IDS].puppet_mxid(member)
        assert levels[linked.user_id] == levels[puppet] == 50
        await put_users(stack, {member: user("Mia", "manager")})  # matrixId dropped
        st = await state(observer, room_id)
        assert membership(st, linked.user_id) == "leave"
        assert membership(st, puppet) == "join"
        assert linked.user_id not in st[("m.room.power_levels", "")]["content"]["users"]
    finally:
        await observer.close()
        await linked.close()


async def test_deactivate_user_leaves_rooms_goes_offline_keeps_history(stack) -> None:
    ids = stack.app[IDS]
    linked = await matrix_user(stack.synapse, unique("el"))
    member = unique("dv")
    observer, _, _, room_id = await project_with_observer(
        stack, {member: user("Dan", "manager", matrixId=linked.user_id)}
    )
    try:
        await accept_invite(linked, room_id)
        puppet = ids.puppet_mxid(member)
        sent = await stack.app[MATRIX].send_event(
            room_id, "m.room.message", {"msgtype": "m.text", "body": "hi"}, as_user=puppet
        )
        status, resp = await admin(stack, "DELETE", f"/users/{member}")
        assert status == 200 and not resp["errors"], resp
        assert resp["user"]["active"] is False
        assert resp["applied"]["users"]["deactivate"] == [member]
        st = await state(observer, room_id)
        event = st[("m.room.member", puppet)]
        assert event["content"]["membership"] == "leave" and event["sender"] == puppet
        assert membership(st, linked.user_id) == "leave"
        assert puppet not in st[("m.room.power_levels", "")]["content"]["users"]
        # Once no room is shared, others cannot see it; the puppet itself can.
        presence = await stack.app[HOMESERVER].get(
            f"/_matrix/client/v3/presence/{puppet}/status", as_user=puppet
        )
        assert presence["presence"] == "offline"
        history = await observer.room_messages(room_id, limit=50)
        assert isinstance(history, RoomMessagesResponse)
        assert sent in {e.event_id for e in history.chunk}
        assert (await stack.app[USERS].get(member)).active is False
        # Deactivating again changes nothing on the homeserver.
        before = stack.app[HOMESERVER].writes
        status, resp = await admin(stack, "DELETE", f"/users/{member}")
        assert status == 200 and resp["writes"]["made"] == 0
        assert stack.app[HOMESERVER].writes == before
    finally:
        await observer.close()
        await linked.close()


async def test_archive_project_stops_posting_keeps_history(stack) -> None:
    ids = stack.app[IDS]
    member = unique("ar")
    observer, admin_id, project_id, room_id = await project_with_observer(
        stack, {member: user("Ari", "manager")}
    )
    try:
        await observer.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "x"})
        status, resp = await admin(stack, "DELETE", f"/projects/{project_id}")
        assert status == 200 and not resp["errors"], resp
        assert resp["project"]["archived"] is True
        assert resp["applied"]["projects"]["archive"] == [project_id]
        st = await state(observer, room_id)
        levels = st[("m.room.power_levels", "")]["content"]
        assert levels["events_default"] == 100
        assert all(level < 100 for level in levels["users"].values())
        denied = await observer.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": "still here?"}
        )
        assert isinstance(denied, RoomSendError)
        # Not even the CRM admin's puppet (power 100 before archiving) may post.
        with pytest.raises(MatrixError) as refused:
            await stack.app[MATRIX].send_event(
                room_id, "m.room.message", {"msgtype": "m.text", "body": "p"},
                as_user=ids.puppet_mxid(admin_id),
            )  # fmt: skip
        assert refused.value.status == 403
        history = await observer.room_messages(room_id, limit=50)
        assert isinstance(history, RoomMessagesResponse)
        assert any(getattr(e, "body", None) == "x" for e in history.chunk)
        # Members stay, so history stays readable to them.
        assert membership(st, ids.puppet_mxid(member)) == "join"
    finally:
        await observer.close()


async def test_drift_from_element_is_repaired_at_once(stack) -> None:
    ids = stack.app[IDS]
    member = unique("dr")
    observer, _, _, room_id = await project_with_observer(stack, {member: user("Dru")})
    puppet = ids.puppet_mxid(member)
    try:
        await eventually(lambda: _member_is(stack, room_id, observer.user_id, "join"))
        assert isinstance(await observer.room_kick(room_id, puppet, "oops"), RoomKickResponse)

        async def rejoined() -> bool:
            return membership(await state(observer, room_id), puppet) == "join"

        await eventually(rejoined)
        st = await state(observer, room_id)
        levels = st[("m.room.power_levels", "")]["content"]
        tampered = {**levels, "users": {**levels["users"], puppet: 100}}
        put = await observer.room_put_state(room_id, "m.room.power_levels", tampered)
        assert isinstance(put, RoomPutStateResponse), put
        await observer.room_put_state(room_id, "m.room.name", {"name": "Hijacked"})

        async def restored() -> bool:
            st = await state(observer, room_id)
            return (
                puppet not in st[("m.room.power_levels", "")]["content"]["users"]
                and st[("m.room.name", "")]["content"]["name"] == "Launch"
            )

        await eventually(restored)
    finally:
        await observer.close()


async def test_homeserver_queries_create_puppets_and_rooms_on_demand(stack) -> None:
    app, ids = stack.app, stack.app[IDS]
    crm_user_id = unique("q")
    mxid = ids.puppet_mxid(crm_user_id)
    await app[USERS].upsert(
        CrmUser(crm_user_id=crm_user_id, mxid=mxid, name="Quinn", email="q@example.com")
    )
    headers = {"Authorization": f"Bearer {stack.config['appservice.hs_token']}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(f"{stack.bridge_url}/_matrix/app/v1/users/{mxid}") as resp:
            assert resp.status == 200
        unknown = ids.puppet_mxid(unique("nobody"))
        async with session.get(f"{stack.bridge_url}/_matrix/app/v1/users/{unknown}") as resp:
            assert resp.status == 404
    row = await app[USERS].get(crm_user_id)
    assert row.registered and row.applied_displayname == "Quinn"
    # Nothing changed since: ensuring the puppet again makes no homeserver write.
    before = app[HOMESERVER].writes
    await ensure_puppet(app, row)
    assert app[HOMESERVER].writes == before

    # A project the CRM knows but whose room does not exist yet: resolving its alias from
    # a plain client creates the room.
    project_id = unique("qp")
    await app[PROJECTS].upsert(Project(project_id=project_id, name="Queried", members=[]))
    client = await matrix_user(stack.synapse, unique("el"))
    try:
        resolved = await client.room_resolve_alias(ids.project_alias(project_id))
        assert isinstance(resolved, RoomResolveAliasResponse), resolved
        assert (await app[PROJECTS].get(project_id)).room_id == resolved.room_id
    finally:
        await client.close()


async def test_avatar_is_uploaded_only_when_it_changes(stack, aiohttp_server) -> None:
    png = bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c63f8ffff3f0005fe02fea7d6a4a00000000049454e44ae426082"
    )

    async def picture(_: web.Request) -> web.Response:
        return web.Response(body=png, content_type="image/png")

    served = web.Application()
    served.router.add_get("/{name}.png", picture)
    server = await aiohttp_server(served)
    crm_user_id = unique("av")
    mxid = stack.app[IDS].puppet_mxid(crm_user_id)
    first = user("Ava", avatar=str(server.make_url("/a.png")))
    await put_users(stack, {crm_user_id: first})
    mxc = (await stack.app[MATRIX].get_profile(mxid))["avatar_url"]
    assert mxc.startswith("mxc://")
    status, resp = await admin(stack, "PUT", f"/users/{crm_user_id}", first)
    assert status == 200 and resp["writes"]["made"] == 0
    status, resp = await admin(
        stack, "PUT", f"/users/{crm_user_id}", {**first, "avatar": str(server.make_url("/b.png"))}
    )
    assert status == 200 and resp["applied"]["users"]["avatar"] == [crm_user_id]
    assert resp["writes"]["made"] == 2  # one upload, one profile update
    assert (await stack.app[MATRIX].get_profile(mxid))["avatar_url"] not in (mxc, None)


async def test_invalid_puts_get_400_with_every_problem(stack) -> None:
    crm_user_id = unique("bad")
    status, body = await admin(
        stack, "PUT", f"/users/{crm_user_id}", {"name": "", "role": "ceo", "matrixId": "x"}
    )
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM"
    assert len(body["problems"]) == 4  # name, email, role, matrixId
    status, body = await admin(
        stack, "PUT", f"/projects/{unique('bad')}", {"name": "P", "members": [crm_user_id]}
    )
    assert status == 400 and body["problems"] == [f"members: unknown user {crm_user_id!r}"]
    assert await stack.app[USERS].get(crm_user_id) is None
