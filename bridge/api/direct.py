"""Direct conversations: one Matrix DM room per pair of CRM users.

Idempotent across processes: a request claims the pair in SQL (``direct_claim``) before it
creates the room, so of simultaneous requests only one calls createRoom; the others wait
for its conversation row. A crash or an uncertain createRoom (a timeout after sending)
leaves the claim behind; the next request takes it over and looks for the room the earlier
attempt may have made (its create event carries the claim's token) before making one.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..context import CONVERSATIONS, DATABASE, MATRIX, ROOM_MEMBERS, USERS
from ..db.conversation import DIRECT, Conversation, direct_key
from ..db.crm_user import CrmUser, now_ms
from ..db.direct_claim import DirectClaim, DirectClaimStore
from ..errors import BadRequest, HomeserverUnavailable, InvalidParam, NotFound, ServiceUnavailable
from ..matrix.homeserver import MatrixError
from .dm_levels import LEVELS_VERSION, creation_override

if TYPE_CHECKING:
    from ..chat.service import ChatService

log = logging.getLogger("bridge.api.direct")

DM_LOCKS = web.AppKey("dm_locks", dict)
# Longer than any createRoom may take (rate-limit retries included): an older claim is a
# crashed holder's. How long a request waits for another one creating the same DM.
CLAIM_LEASE_MS = 60_000
CLAIM_WAIT = 20.0
# In the room's create event, so an attempt whose outcome we never learnt can be found.
CLAIM_FIELD = "org.crm.direct_claim"


async def ensure_puppet(app: web.Application, user: CrmUser) -> None:
    """The directory side's puppet provisioning when present, a minimal one otherwise."""
    try:
        from ..crm.puppets import ensure_puppet as crm_ensure_puppet
    except ImportError:
        crm_ensure_puppet = None
    if crm_ensure_puppet is not None:
        await crm_ensure_puppet(app, user)
        return
    if not user.registered:
        localpart = user.mxid.removeprefix("@").split(":", 1)[0]
        await app[MATRIX].register_puppet(localpart)
        await app[MATRIX].set_displayname(user.mxid, user.name)


async def _add_m_direct(app: web.Application, owner: CrmUser, other: CrmUser, room_id: str) -> None:
    data = await app[MATRIX].get_account_data(owner.mxid, "m.direct")
    rooms = data.get(other.mxid) if isinstance(data.get(other.mxid), list) else []
    if room_id not in rooms:
        data[other.mxid] = [*rooms, room_id]
        await app[MATRIX].set_account_data(owner.mxid, "m.direct", data)


async def open_direct(
    service: ChatService, user: CrmUser, other_id: Any
) -> tuple[dict[str, Any], bool]:
    """The DM in the list's shape, created when missing, and whether it is new."""
    conversation, created = await create_direct(service, user, other_id)
    listed = await service.conversations_for(user, room_id=conversation.room_id)
    if not listed:
        raise NotFound("Conversation not found")
    return listed[0], created


async def create_direct(
    service: ChatService, user: CrmUser, other_id: Any
) -> tuple[Conversation, bool]:
    """The DM between user and other, created when missing; returns it and whether it is new."""
    if not isinstance(other_id, str | int) or isinstance(other_id, bool) or str(other_id) == "":
        raise InvalidParam("userId is required")
    other_id = str(other_id)
    if other_id == user.crm_user_id:
        raise BadRequest("You cannot start a conversation with yourself", errcode="M_INVALID_PARAM")
    app = service.app
    other = await app[USERS].get(other_id)
    if other is None or not other.active:
        raise NotFound("User not found")
    key = direct_key(user.crm_user_id, other.crm_user_id)
    # Requests of this process queue here instead of polling the claim; entries go when
    # nobody holds or waits.
    locks: dict[str, list[Any]] = app[DM_LOCKS]
    entry = locks.setdefault(key, [asyncio.Lock(), 0])
    entry[1] += 1
    try:
        async with entry[0]:
            return await _existing_or_claimed(app, key, user, other)
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            locks.pop(key, None)


async def _existing_or_claimed(
    app: web.Application, key: str, user: CrmUser, other: CrmUser
) -> tuple[Conversation, bool]:
    claims = DirectClaimStore(app[DATABASE])
    token = uuid.uuid4().hex
    deadline = time.monotonic() + CLAIM_WAIT
    while True:
        existing = await app[CONVERSATIONS].get_direct(key)
        if existing is not None:
            await _rejoin(app, existing, (user, other))
            return existing, False
        holder = await claims.claim(key, token, now_ms())
        if holder is not None and holder.token == token:
            break
        if (
            holder is not None
            and now_ms() - holder.claimed_at > CLAIM_LEASE_MS
            and await claims.take_over(key, holder.token, token, now_ms())
        ):
            log.info("Taking over an abandoned claim on a DM (%s)", holder.token[:8])
            return await _create(app, claims, key, token, user, other, earlier=holder)
        if time.monotonic() > deadline:
            raise ServiceUnavailable("This conversation is being created; try again shortly")
        await asyncio.sleep(0.1)
    return await _create(app, claims, key, token, user, other)


async def _create(
    app: web.Application,
    claims: DirectClaimStore,
    key: str,
    token: str,
    user: CrmUser,
    other: CrmUser,
    earlier: DirectClaim | None = None,
) -> tuple[Conversation, bool]:
    """Holding the claim: find the room an earlier attempt made, or create it; then record
    the conversation, join both and mark the room direct for both."""
    made: str | None = None
    try:
        # A holder that finished just before we claimed has released its claim already.
        if (existing := await app[CONVERSATIONS].get_direct(key)) is not None:
            await claims.release(key, token)
            await _rejoin(app, existing, (user, other))
            return existing, False
        await asyncio.gather(ensure_puppet(app, user), ensure_puppet(app, other))
        room_id = earlier.room_id if earlier else None
        if room_id is None and earlier is not None:
            room_id = await _find_attempt(app, earlier.token, (user, other))
        if room_id is None:
            room_id = await _create_room(app, claims, key, token, user, other)
        made = room_id
        await claims.set_room(key, token, room_id)
        # Recorded before the other side joins: if that fails, the next request finds this
        # room and finishes the join instead of creating another one.
        conversation = await app[CONVERSATIONS].add(room_id, DIRECT, key=key)
        if made is not None and earlier is None:
            await _levels_checked(app, room_id)  # made with the current rule
    except _Kept:
        raise
    except BaseException:
        if made is None:
            await claims.release(key, token)
        else:
            # The room exists but is not recorded: the next request finds it by token.
            await claims.expire(key, token)
        raise
    await claims.release(key, token)
    await _rejoin(app, conversation, (user, other), strict=True)
    await asyncio.gather(
        _add_m_direct(app, user, other, room_id), _add_m_direct(app, other, user, room_id)
    )
    log.info("Created DM %s for %s and %s", room_id, user.crm_user_id, other.crm_user_id)
    return conversation, True


async def _create_room(
    app: web.Application,
    claims: DirectClaimStore,
    key: str,
    token: str,
    user: CrmUser,
    other: CrmUser,
) -> str:
    body = {
        # Not trusted_private_chat: its invitee may redact the creator's messages.
        "preset": "private_chat",
        "power_level_content_override": creation_override(),
        "is_direct": True,
        "invite": [other.mxid],
        "visibility": "private",
        "creation_content": {CLAIM_FIELD: token},
        "initial_state": [
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "shared"},
            }
        ],
    }
    try:
        room_id = await app[MATRIX].create_room(body, as_user=user.mxid)
    except HomeserverUnavailable:
        # It may have made the room: keep the claim, expired, so the next request takes it
        # over at once and looks for the room before making one.
        await claims.expire(key, token)
        raise _Kept() from None
    await app[ROOM_MEMBERS].set(room_id, user.mxid, "join")
    return room_id


async def _levels_checked(app: web.Application, room_id: str) -> None:
    await app[CONVERSATIONS].set_levels_version(room_id, LEVELS_VERSION)


class _Kept(HomeserverUnavailable):
    """createRoom's outcome is unknown: the claim stays for the next request to resolve."""


async def _find_attempt(app: web.Application, token: str, members: tuple) -> str | None:
    """The room an earlier attempt created, told by the token in its create event."""
    for member in members:
        try:
            rooms = await app[MATRIX].joined_rooms(member.mxid)
        except MatrixError:
            continue
        for room_id in rooms:
            if await app[CONVERSATIONS].get_by_room(room_id) is not None:
                continue
            create = await app[MATRIX].get_state_event(
                room_id, "m.room.create", as_user=member.mxid
            )
            if (create or {}).get(CLAIM_FIELD) == token:
                await app[ROOM_MEMBERS].set(room_id, member.mxid, "join")
                log.info("Found the DM room %s an interrupted attempt created", room_id)
                return room_id
    return None


async def _rejoin(
    app: web.Application, conversation: Conversation, users: tuple, strict: bool = False
) -> None:
    """A DM member who left (or never joined) comes back when the DM is asked for again.

    ``strict`` (a DM just made) lets a refusal through: the conversation row is there, so
    the next request finishes the join instead of creating another room."""
    for member in users:
        if await app[ROOM_MEMBERS].get(conversation.room_id, member.mxid) == "join":
            continue
        try:
            await app[MATRIX].join(conversation.room_id, as_user=member.mxid)
        except MatrixError as e:
            if strict:
                raise
            # A refusal (e.g. not invited any more) leaves the DM as it is; an outage is
            # not caught here and answers 503.
            log.warning("Cannot rejoin %s to %s: %s", member.mxid, conversation.room_id, e)
            continue
        await app[ROOM_MEMBERS].set(conversation.room_id, member.mxid, "join")
