"""The read model behind the REST routes and the real-time channel (``app[CHAT]``).

It answers from the bridge's own index (conversations, members, event order, receipts) and
asks the homeserver only for what the index does not hold: message bodies (cached in
memory, never persisted), history pages and profiles of Matrix-only users.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any, Protocol

from aiohttp import web

from ..context import (
    CONVERSATIONS,
    DATABASE,
    EVENT_INDEX,
    IDS,
    MATRIX,
    PROJECTS,
    RECEIPTS,
    ROOM_MEMBERS,
    USERS,
)
from ..db.cleared import ClearedStore
from ..db.client_message import ClientMessageStore
from ..db.conversation import Conversation
from ..db.crm_user import CrmUser
from ..db.listing import ConversationList
from ..db.media import MediaStore
from ..db.receipt import ReadMark
from ..db.relation import REPLACE, THREAD
from ..db.unread import UnreadCounter
from ..errors import NotFound
from ..ids import conversation_id_for_room, room_id_for_conversation
from ..matrix.homeserver import MatrixError
from ..matrix.relations import RELATIONS, rel_type_of
from ..tasks import drop
from . import enrich, preview, serialize
from .prefetch import PagePrefetch
from .serialize import ReadState

log = logging.getLogger("bridge.chat")

CONVERSATION_NOT_FOUND = "Conversation not found"
_PROFILE_TTL = 300.0
_PROFILE_RETRY = 30.0
_PROFILE_CACHE_SIZE = 10000
_EVENT_CACHE_SIZE = 20000
_BY_ROOM_CAP = 50000


class EventCache:
    """Recent message events by id, so lastMessage needs no homeserver call. Memory only."""

    def __init__(self, size: int = _EVENT_CACHE_SIZE) -> None:
        self.size = size
        self._events: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # Set while this process may miss invalidations (chat/invalidation.py): nothing is
        # served from memory then.
        self.bypass = False

    def put(self, event: dict[str, Any], *, made_here: bool = False) -> None:
        """``made_here``: built by the send path, not read from the homeserver; it never
        replaces the homeserver's copy (its timestamp is the homeserver's)."""
        if self.bypass or (made_here and event["event_id"] in self._events):
            return
        self._events[event["event_id"]] = event
        self._events.move_to_end(event["event_id"])
        while len(self._events) > self.size:
            self._events.popitem(last=False)

    def get(self, event_id: str) -> dict[str, Any] | None:
        return None if self.bypass else self._events.get(event_id)

    def drop(self, event_id: str) -> None:
        self._events.pop(event_id, None)

    def clear(self) -> None:
        self._events.clear()


class OnlineSource(Protocol):
    """Who is online: person id (CRM user id, or mxid) -> their accounts; answers
    (online, last seen in ms) per person id. The facade provides it (api/online.py)."""

    async def __call__(
        self, people: dict[str, set[str]]
    ) -> dict[str, tuple[bool, float | None]]: ...


class ChatService:
    def __init__(self, app: web.Application) -> None:
        self.app = app
        # Participants' isOnline/lastSeen; without one, everybody shows offline.
        self.online: OnlineSource | None = None
        self.events = EventCache()
        # Every map here is capped; past its cap it is emptied (entries refill on demand).
        # Profiles by mxid: _PROFILE_CACHE_SIZE, each for _PROFILE_TTL.
        self._profiles: dict[str, tuple[float, dict[str, Any]]] = {}
        self.fetch_limit = asyncio.Semaphore(8)
        # Conversation identity by room (never changes): _BY_ROOM_CAP.
        self._by_room: dict[str, Conversation] = {}
        # (user, conversation) participation checks of the last 2 s: 50,000.
        self._members_seen: dict[tuple[str, str], tuple[float, Conversation]] = {}
        # Serialise a user's react/unreact of one key, and the pins of a room (actions.py):
        # past 10,000 the unlocked ones are dropped.
        self.relation_locks: dict[str, asyncio.Lock] = {}
        # The pinned lists this process went through per room, oldest first, and when it
        # last wrote one (actions.py): 21 lists a room, 10,000 rooms (oldest dropped).
        self.pin_writes: dict[str, tuple[list[list[str]], float]] = {}
        # History: events the homeserver returned per message kept, per room (history.py):
        # 20,000 rooms.
        self.history_stretch: dict[str, float] = {}
        # (puppet, room) pairs whose clear point this process checked against Matrix
        # (clear.py): 100,000.
        self.clear_checked: set[tuple[str, str]] = set()

    # Stores, opened by the app's database context.
    @property
    def client_messages(self) -> ClientMessageStore:
        return ClientMessageStore(self.app[DATABASE])

    @property
    def media(self) -> MediaStore:
        return MediaStore(self.app[DATABASE])

    @property
    def cleared(self) -> ClearedStore:
        return ClearedStore(self.app[DATABASE])

    # Who and where.
    async def conversation_for(
        self, user: CrmUser, conversation_id: str, *, recent: bool = False
    ) -> Conversation:
        """The conversation if the user takes part; 404 otherwise, whether or not it exists.

        ``recent`` accepts a membership confirmed in the last two seconds: for sends, where
        the homeserver checks membership again anyway.
        """
        key = (user.mxid, conversation_id)
        if recent and (hit := self._members_seen.get(key)) and time.monotonic() - hit[0] < 2:
            return hit[1]
        if not conversation_id or room_id_for_conversation(conversation_id) is None:
            raise NotFound(CONVERSATION_NOT_FOUND)
        # One query: the conversation, only when the user's puppet has joined its room.
        conversation = await self.app[CONVERSATIONS].joined(conversation_id, user.mxid)
        if conversation is None:
            self._members_seen.pop(key, None)
            raise NotFound(CONVERSATION_NOT_FOUND)
        if len(self._members_seen) > 50000:
            self._members_seen.clear()
        self._members_seen[key] = (time.monotonic(), conversation)
        return conversation

    async def participants(self, conversation: Conversation) -> list[CrmUser]:
        members = await self.app[ROOM_MEMBERS].of_room(conversation.room_id)
        joined = [mxid for mxid, membership in members.items() if membership == "join"]
        users = await self.app[USERS].get_by_mxids(joined)
        seen: dict[str, CrmUser] = {}
        for mxid in joined:
            if (user := users.get(mxid)) and user.crm_user_id not in seen:
                seen[user.crm_user_id] = user
        return list(seen.values())

    async def profile(self, mxid: str) -> dict[str, Any]:
        cached = self._profiles.get(mxid)
        if cached and time.monotonic() - cached[0] < _PROFILE_TTL:
            return cached[1]
        try:
            profile = await self.app[MATRIX].get_profile(mxid)
        except MatrixError as e:  # no profile (404), or not ours to see
            log.debug("No profile for %s: %s", mxid, e)
            profile = {}
        except Exception as e:  # slow or gone (real-time lanes give up fast): decoration
            log.debug("Profile of %s not available now: %s", mxid, e)
            # The last one we had, else nothing (the name falls back to the localpart);
            # asked again after _PROFILE_RETRY, not on every message meanwhile.
            fallback = cached[1] if cached else {}
            if len(self._profiles) >= _PROFILE_CACHE_SIZE:
                self._profiles.clear()
            self._profiles[mxid] = (time.monotonic() - _PROFILE_TTL + _PROFILE_RETRY, fallback)
            return fallback
        avatar = profile.get("avatar_url") if isinstance(profile, dict) else None
        # Shown as this user's avatar, so any CRM user may fetch it (as on Matrix, where
        # profiles are visible to everyone on the server), while it is: never a file posted
        # in a room or uploaded through us (db/media.py).
        mxc = avatar if isinstance(avatar, str) and avatar.startswith("mxc://") else None
        await self.media.avatar_is(mxid, mxc)
        if len(self._profiles) >= _PROFILE_CACHE_SIZE:
            self._profiles.clear()  # crude but bounded; entries refill on demand
        self._profiles[mxid] = (time.monotonic(), profile)
        return profile

    async def may_download(self, mxc: str, user: CrmUser) -> bool:
        """The uploader, a member of a room it was posted in, or anyone if it is the current
        avatar of a user whose profile showed it (checked again here: a grant is honoured
        only while the avatar is still that file, as of the profile cache)."""
        if await self.media.may_download(mxc, user.crm_user_id, user.mxids):
            return True
        for owner in await self.media.avatar_owners(mxc):
            if (await self.profile(owner)).get("avatar_url") == mxc:
                return True
        return False

    async def user_object(self, mxid_or_user: str | CrmUser) -> dict[str, Any]:
        if isinstance(mxid_or_user, CrmUser):
            return serialize.user_object(mxid_or_user)
        user = await self.app[USERS].get_by_mxid(mxid_or_user)
        if user is not None:
            return serialize.user_object(user)
        profile = await self.profile(mxid_or_user)
        return serialize.matrix_user_object(mxid_or_user, profile, self.app[IDS].domain)

    async def _senders(
        self,
        mxids: set[str],
        known: dict[str, CrmUser] | None = None,
        asked: frozenset[str] = frozenset(),
    ) -> dict[str, dict[str, Any]]:
        """User objects for senders: CRM users from the index, others from their profiles.
        ``known``: CRM users loaded already, of every mxid in ``asked``."""
        users = dict(known or {})
        missing = [m for m in mxids if m not in users and m not in asked]
        users.update(await self.app[USERS].get_by_mxids(missing))
        out = {mxid: serialize.user_object(user) for mxid, user in users.items() if mxid in mxids}
        strangers = [m for m in mxids if m not in out]
        profiles = await asyncio.gather(*(self.profile(m) for m in strangers))
        for mxid, profile in zip(strangers, profiles, strict=True):
            out[mxid] = serialize.matrix_user_object(mxid, profile, self.app[IDS].domain)
        return out

    # Messages.
    @staticmethod
    def _states(
        room_ids: list[str], rows: list[ReadMark], users: dict[str, CrmUser]
    ) -> dict[str, ReadState]:
        """Receipts per room, readers named by CRM user id when they are CRM users."""
        states: dict[str, ReadState] = {room_id: ReadState() for room_id in room_ids}
        for r in rows:
            reader = users[r.mxid].crm_user_id if r.mxid in users else r.mxid
            states[r.room_id].add(reader, r.pos, r.event_ts, r.ts)
        return states

    async def read_states(
        self, room_ids: list[str], users: dict[str, CrmUser] | None = None
    ) -> dict[str, ReadState]:
        rows = await self.app[RECEIPTS].marks(room_ids)
        known = dict(users or {})
        unknown = list({r.mxid for r in rows} - set(known))
        known.update(await self.app[USERS].get_by_mxids(unknown))
        return self._states(room_ids, rows, known)

    async def room_marks(self, room_id: str) -> list[ReadMark]:
        return await self.app[RECEIPTS].marks([room_id])

    async def sender_objects(self, mxids: set[str]) -> dict[str, dict[str, Any]]:
        return await self._senders(mxids) if mxids else {}

    async def reader_of(self, conversation: Conversation) -> str:
        """An account of ours joined to the room, to read what the index does not hold."""
        members = await self.participants(conversation)
        return members[0].mxid if members else self.app[IDS].bot_mxid

    async def messages_from_events(
        self,
        conversation: Conversation,
        events: list[dict[str, Any]],
        viewer: CrmUser | None = None,
        *,
        prefetch: Awaitable[PagePrefetch] | None = None,
    ) -> list[dict[str, Any]]:
        """Message objects, relations included; ``viewer`` decides reactions' ``me``.

        ``prefetch``: the room's newest events as the index sees them, asked for already
        (say while the homeserver read the page): :func:`prefetch.newest`.
        """
        ahead = await prefetch if prefetch is not None else None
        if not events:
            return []
        senders = {e["sender"] for e in events}
        event_ids = [e["event_id"] for e in events]
        pairs = [(conversation.room_id, e) for e in events]
        if ahead:
            # What the prefetch missed, looked up in turn: usually nothing, and then no task
            # is made and no loop turn is waited for.
            asked = ahead.asked
            rows_of = await self.app[EVENT_INDEX].positions(event_ids)
            users = {**ahead.users, **await self.app[USERS].get_by_mxids(sorted(senders - asked))}
            found = await enrich.indexed(self, pairs, prefetch=ahead)
            rows = ahead.marks
        else:
            # One round of lookups for the page: positions, receipts, senders and relations.
            asked = frozenset()
            rows_of, rows, users, found = await asyncio.gather(
                self.app[EVENT_INDEX].positions(event_ids),
                self.room_marks(conversation.room_id),
                self.app[USERS].get_by_mxids(sorted(senders)),
                enrich.indexed(self, pairs),
            )
        if readers := sorted({r.mxid for r in rows} - set(users) - asked):
            users.update(await self.app[USERS].get_by_mxids(readers))
        state = self._states([conversation.room_id], rows, users)[conversation.room_id]
        objects = await self._senders(senders, users, asked)
        messages = [
            serialize.message_object(
                event,
                conversation.conversation_id,
                objects[event["sender"]],
                state,
                rows_of[event["event_id"]].pos if event["event_id"] in rows_of else None,
            )
            for event in events
        ]

        async def reader() -> str:
            return await self.reader_of(conversation)

        await enrich.decorate(
            self,
            [(conversation.room_id, e, m) for e, m in zip(events, messages, strict=True)],
            viewer,
            viewer.mxid if viewer else reader,
            known=users,
            asked=asked,
            prefetched=found,
        )
        return messages

    async def room_of_message(self, event_id: str) -> str | None:
        """The room of a message (main timeline or thread) we know, from the indexes or cache."""
        indexed = await self.app[EVENT_INDEX].get(event_id)
        if indexed is not None:
            return indexed.room_id
        for rel in await self.app[RELATIONS].store.of_event(event_id):
            if rel.rel_type == THREAD:
                return rel.room_id
        cached = self.events.get(event_id)
        if cached and cached.get("content") and rel_type_of(cached["content"]) != REPLACE:
            return cached.get("room_id")
        return None

    async def conversation_by_room(self, room_id: str) -> Conversation | None:
        """A conversation's identity (id, room, kind, project) never changes: cached."""
        if cached := self._by_room.get(room_id):
            return cached
        conversation = await self.app[CONVERSATIONS].get_by_room(room_id)
        if conversation is not None:
            if len(self._by_room) >= _BY_ROOM_CAP:
                self._by_room.clear()
            self._by_room[room_id] = conversation
        return conversation

    async def message_from_event(self, event: dict[str, Any]) -> dict[str, Any]:
        conversation = await self.conversation_by_room(event["room_id"])
        if conversation is None:
            conversation = Conversation(
                conversation_id=conversation_id_for_room(event["room_id"]),
                room_id=event["room_id"],
                kind="unknown",
            )
        return (await self.messages_from_events(conversation, [event]))[0]

    async def fetch_event(self, room_id: str, event_id: str, as_user: str) -> dict[str, Any] | None:
        """A message body from the cache, or from the homeserver (then cached)."""
        if cached := self.events.get(event_id):
            return cached
        async with self.fetch_limit:
            try:
                event = await self.app[MATRIX].get_event(room_id, event_id, as_user=as_user)
            except MatrixError as e:
                log.debug("Cannot fetch %s in %s: %s", event_id, room_id, e)
                return None
        event.setdefault("room_id", room_id)
        if event.get("content"):
            self.events.put(event)
        return event

    # Conversation lists.
    async def conversations_for(
        self, user: CrmUser, kind: str | None = None, room_id: str | None = None
    ) -> list[dict[str, Any]]:
        """The user's conversations, most recent activity first, from the index only.

        A fixed number of queries whatever the number of conversations, run concurrently;
        the last message is the row's preview (rows indexed before previews existed are
        filled in once, from the body cache or the homeserver, eight at a time).
        """
        own = user.matrix_id or user.mxid
        members, receipts, users_store = (
            self.app[ROOM_MEMBERS], self.app[RECEIPTS], self.app[USERS]
        )  # fmt: skip
        # All the user's rooms by a subquery, or the few a filter left (asked below).
        everything = not (kind or room_id)
        # What needs only the user is asked beside the list, on other connections: the
        # database answers them while this process decodes the list.
        beside = asyncio.gather(
            members.joined_in_rooms_of(user.mxid) if everything else _no_rows(),
            receipts.marks_in_rooms_of(user.mxid) if everything else _no_rows(),
            # The members' CRM users, in the same round trip (the filtered few: below).
            users_store.in_rooms_of(user.mxid) if everything else _nobody(),
            self.cleared.of_user(user.mxid),
        )
        try:
            # One statement: the rows, their last messages' positions and unread counts.
            listed = await ConversationList(self.app[DATABASE]).of_user(
                user.mxid, own, kind, room_id
            )
        except BaseException:
            drop(beside)
            raise
        if not listed:
            drop(beside)
            return []
        conversations = [item.conversation for item in listed]
        unread_counts = {item.conversation.room_id: item.unread for item in listed}
        positions = {item.conversation.room_id: item.last_pos for item in listed}
        room_ids = [c.room_id for c in conversations]
        last_events: dict[str, dict[str, Any]] = {}
        for c in conversations:
            event = preview.event_of(c.last_preview, c.last_event_id, c.room_id)
            if event is not None:
                last_events[c.room_id] = event
        missing = [c for c in conversations if c.last_event_id and c.room_id not in last_events]

        gathered = await asyncio.gather(
            beside,
            self.app[PROJECTS].get_many([c.project_id for c in conversations if c.project_id]),
            asyncio.gather(*(self._fill_preview(c, user.mxid) for c in missing)),
            _no_rows() if everything else members.joined_in(room_ids),
            _no_rows() if everything else receipts.marks(room_ids),
        )
        (member_rows, marks, users, cleared), projects, fetched, few_members, few_marks = gathered
        if not everything:
            member_rows, marks = few_members, few_marks
        for c, event in zip(missing, fetched, strict=True):
            if event is not None:
                last_events[c.room_id] = event
        # A redacted last message keeps its row, with nothing to show.
        last_events = {r: e for r, e in last_events.items() if e.get("content")}
        wanted = set(room_ids)
        bot = self.app[IDS].bot_mxid
        joined: dict[str, list[str]] = {}
        for member_room, mxid in member_rows:
            if mxid != bot and member_room in wanted:
                joined.setdefault(member_room, []).append(mxid)
        marks = [r for r in marks if r.room_id in wanted]
        mxids = {m for ms in joined.values() for m in ms} | {r.mxid for r in marks}
        senders = {e["sender"] for e in last_events.values()}
        if unknown := sorted((mxids | senders) - set(users)):
            users = {**users, **await users_store.get_by_mxids(unknown)}
        states = self._states(room_ids, marks, users)
        objects = await self._senders(senders, users)
        for mxid in mxids - set(objects):
            objects[mxid] = (
                serialize.user_object(users[mxid])
                if mxid in users
                else serialize.matrix_user_object(
                    mxid, self._profiles.get(mxid, (0, {}))[1], self.app[IDS].domain
                )
            )
        out = []
        lasts: list[enrich.Item] = []
        people: dict[str, set[str]] = {}
        for mxids_in_room in joined.values():
            for mxid in mxids_in_room:
                people.setdefault(objects[mxid]["_id"], set()).add(mxid)
        # Who is online is asked while the rest is built and decorated; each participant's
        # object (one per person, shared by their conversations) is completed at the end.
        asking = (
            asyncio.ensure_future(self.online(people))
            if self.online is not None and people
            else None
        )
        shown: dict[str, dict[str, Any]] = {}
        for person_id, mxids_of in people.items():
            shown[person_id] = serialize.with_presence(objects[next(iter(mxids_of))], False, None)
        for c in conversations:
            participants: list[dict[str, Any]] = []
            seen: set[str] = set()
            for mxid in joined.get(c.room_id, []):
                person_id = objects[mxid]["_id"]
                if person_id not in seen:
                    seen.add(person_id)
                    participants.append(shown[person_id])
            last = None
            event = last_events.get(c.room_id)
            if event is not None:
                pos = positions[c.room_id]
                ts = int(event.get("origin_server_ts") or 0)
                point = cleared.get(c.room_id)
                # Cleared by this user with nothing newer yet: no lastMessage for them.
                if point is None or not point.hides(event["event_id"], ts, pos):
                    last = serialize.message_object(
                        event, c.conversation_id, objects[event["sender"]], states[c.room_id], pos
                    )
                    lasts.append((c.room_id, event, last))
            project = projects.get(c.project_id) if c.project_id else None
            out.append(
                serialize.conversation_object(
                    c, participants, project, last, unread_counts.get(c.room_id, 0)
                )
            )
        # Pins the bridge never saw are not asked of Synapse for a listing (one call a room).
        try:
            await enrich.decorate(self, lasts, user, user.mxid, fetch_pins=False, known=users)
            online = await asking if asking is not None else {}
        finally:
            if asking is not None and not asking.done():
                drop(asking)
        for person_id, (is_online, seen_ms) in online.items():
            if person_id in shown:
                shown[person_id].update(serialize.with_presence({}, is_online, seen_ms))
        return out

    async def _fill_preview(self, c: Conversation, reader: str) -> dict[str, Any] | None:
        """The last message of a row without a preview: fetched once, kept in the row."""
        assert c.last_event_id is not None
        event = await self.fetch_event(c.room_id, c.last_event_id, reader)
        if event is not None:
            # For every process: the next listing anywhere reads the row.
            await self.app[CONVERSATIONS].set_preview(
                c.room_id, event["event_id"], preview.preview_of(event)
            )
        return event

    async def conversation(self, user: CrmUser, conversation_id: str) -> dict[str, Any]:
        """One conversation in the list's shape; outsiders get the same 404 as for none."""
        conversation = await self.conversation_for(user, conversation_id)
        listed = await self.conversations_for(user, room_id=conversation.room_id)
        if not listed:
            raise NotFound(CONVERSATION_NOT_FOUND)
        return listed[0]

    async def unread_count(self, user: CrmUser) -> int:
        """The sum of ``unreadCount`` over the user's conversations, in one query."""
        counts = await UnreadCounter(self.app[DATABASE]).by_room(
            user.mxid, user.matrix_id or user.mxid
        )
        return sum(counts.values())


async def _no_rows() -> list[Any]:
    return []


async def _nobody() -> dict[str, CrmUser]:
    return {}


# The read model, shared by the REST facade and the real-time side.
CHAT = web.AppKey("chat", ChatService)
