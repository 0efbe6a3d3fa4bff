"""Direct conversations: one Matrix DM room per pair of CRM users."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..context import CONVERSATIONS, MATRIX, ROOM_MEMBERS, USERS
from ..db.conversation import DIRECT, Conversation, direct_key
from ..db.crm_user import CrmUser
from ..errors import BadRequest, InvalidParam, NotFound
from ..matrix.homeserver import MatrixError

if TYPE_CHECKING:
    from .chat import ChatService

log = logging.getLogger("bridge.api.direct")

DM_LOCKS = web.AppKey("dm_locks", dict)


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
    # One DM per pair even when both ask at once; entries go when nobody holds or waits.
    locks: dict[str, list[Any]] = app[DM_LOCKS]
    entry = locks.setdefault(key, [asyncio.Lock(), 0])
    entry[1] += 1
    try:
        async with entry[0]:
            existing = await app[CONVERSATIONS].get_direct(key)
            if existing is not None:
                await _rejoin(app, existing, (user, other))
                return existing, False
            await asyncio.gather(ensure_puppet(app, user), ensure_puppet(app, other))
            room_id = await app[MATRIX].create_room(
                {
                    "preset": "trusted_private_chat",
                    "is_direct": True,
                    "invite": [other.mxid],
                    "visibility": "private",
                    "initial_state": [
                        {
                            "type": "m.room.history_visibility",
                            "state_key": "",
                            "content": {"history_visibility": "shared"},
                        }
                    ],
                },
                as_user=user.mxid,
            )
            await app[ROOM_MEMBERS].set(room_id, user.mxid, "join")
            # Recorded before the other side joins: if that fails, the next request finds this
            # room and finishes the join instead of creating another one.
            conversation = await app[CONVERSATIONS].add(room_id, DIRECT, key=key)
            await app[MATRIX].join(room_id, as_user=other.mxid)
            await app[ROOM_MEMBERS].set(room_id, other.mxid, "join")
            await asyncio.gather(
                _add_m_direct(app, user, other, room_id), _add_m_direct(app, other, user, room_id)
            )
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            locks.pop(key, None)
    log.info("Created DM %s for %s and %s", room_id, user.crm_user_id, other.crm_user_id)
    return conversation, True


async def _rejoin(app: web.Application, conversation: Conversation, users: tuple) -> None:
    """A DM member who left (or never joined) comes back when the DM is asked for again."""
    for member in users:
        if await app[ROOM_MEMBERS].get(conversation.room_id, member.mxid) == "join":
            continue
        try:
            await app[MATRIX].join(conversation.room_id, as_user=member.mxid)
        except MatrixError as e:
            # A refusal (e.g. not invited any more) leaves the DM as it is; an outage is
            # not caught here and answers 503.
            log.warning("Cannot rejoin %s to %s: %s", member.mxid, conversation.room_id, e)
            continue
        await app[ROOM_MEMBERS].set(conversation.room_id, member.mxid, "join")
