"""Socket.IO room names, and who takes part in which conversation.

Every socket sits in ``user:<crmUserId>`` (events meant for one person, or for "everyone but
the actor") and in ``conversation:<conversationId>`` for each conversation it follows
(``new_message`` and ``conversation_update``, to everyone including the sender).
A CRM user takes part in a conversation when their puppet is joined to its room, the same
rule the REST facade applies.
"""

from __future__ import annotations

from aiohttp import web

from ..context import CONVERSATIONS, ROOM_MEMBERS, USERS
from ..db.conversation import Conversation
from ..db.crm_user import CrmUser

CONVERSATION_ROOM_PREFIX = "conversation:"


def user_room(crm_user_id: str) -> str:
    return f"user:{crm_user_id}"


def conversation_room(conversation_id: str) -> str:
    return f"{CONVERSATION_ROOM_PREFIX}{conversation_id}"


def is_conversation_room(room: str) -> bool:
    return room.startswith(CONVERSATION_ROOM_PREFIX)


def conversation_of_room(room: str) -> str:
    return room.removeprefix(CONVERSATION_ROOM_PREFIX)


def conversation_id_from(data: object) -> str | None:
    """Seed frontends send a bare id; ``{conversationId}`` is accepted too."""
    if isinstance(data, dict):
        data = data.get("conversationId") or data.get("conversation") or data.get("id")
    if isinstance(data, str) and data:
        return data
    return None


async def conversation_ids_of(app: web.Application, user: CrmUser) -> list[str]:
    """The conversations the user takes part in (one indexed query)."""
    return await app[CONVERSATIONS].ids_joined_by([user.mxid])


async def participant_conversation(
    app: web.Application, user: CrmUser, conversation_id: str
) -> Conversation | None:
    """The conversation if the user takes part in it; None otherwise (never a hint why)."""
    conversation = await app[CONVERSATIONS].get(conversation_id)
    if conversation is None:
        return None
    if await app[ROOM_MEMBERS].get(conversation.room_id, user.mxid) == "join":
        return conversation
    return None


async def participants(app: web.Application, room_id: str) -> list[CrmUser]:
    """The CRM users joined to a room, each once (puppet or linked account)."""
    members = await app[ROOM_MEMBERS].of_room(room_id)
    joined = [mxid for mxid, membership in members.items() if membership == "join"]
    found = await app[USERS].get_by_mxids(joined)
    return list({user.crm_user_id: user for user in found.values()}.values())
