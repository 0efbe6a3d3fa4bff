"""The delivery log: ``room_event`` is the log of each conversation, ``seq`` its position.

* **Publish.** Whichever path indexed a message (the send path at once, the transaction,
  a gap found later) announces it: a control message ``{kind: "log", room, upto, messages}``
  on the manager's channel (every process hears it, this one first). ``upto`` is the seq;
  ``messages`` carries the message object when the publisher has it, so nobody rebuilds it.
  A path publishes only past the room's **published mark** (the highest seq every process
  was told about): known here in memory, from the table ``published_mark`` otherwise.
* **Mark.** Written after the announcement reached Redis (the transport's outbox flushed
  without a failure), coalesced per room: one statement per room and batch, off the send
  path. A process that dies before writing it leaves the mark behind; the next publisher
  announces again, which costs nothing (below).
* **Deliver.** Each process delivers to its own sockets in its own lane per room, in seq
  order, once per seq: it remembers the highest seq it delivered per room, reads the index
  for the rows between that and ``upto`` (one indexed query; rows nobody announced, because
  their publisher died, are among them and are built from the index), and emits each row
  after it with ``cursor`` = that row's seq. Announcing twice delivers once.
* **Gaps.** The process that receives transactions announces, on start and when Redis is
  back, every room whose newest row is past its mark (``recover``).
* **Changes.** ``message_update`` and ``message_deleted`` ride the same channel as control
  messages ``{kind: "change", room, event, data}`` and each process emits them to its own
  sockets from the room's delivery lane: behind the delivery of every message announced
  before them. (Emitted directly, a delete overtook the lane still delivering its message,
  and a socket got ``message_deleted`` before the ``new_message`` it removes.)

A failure in a delivery lane (the database away) sends this process's sockets of that
conversation ``resync`` (they refetch instead of missing a message in silence) and marks
the process degraded for a while; the next announcement delivers from where it was.
Failpoints for crash tests: ``log.indexed`` (indexed, not announced), ``log.published``
(announced, mark not written), ``log.lane`` (in the lane, before emit).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

import socketio
from aiohttp import web

from ..chat.cursor import cursor_of
from ..chat.service import CHAT
from ..context import EVENT_INDEX
from ..db.published_mark import PublishedMarkStore
from ..db.room_event import RoomEvent
from ..failpoints import failpoint
from ..ids import conversation_id_for_room
from ..tasks import stop
from .local import LocalSockets
from .manager import CONTROL_EVENT, CONTROL_ROOM
from .pump import Lanes
from .rooms import conversation_room
from .transport import BridgeRedisManager

log = logging.getLogger("bridge.realtime.log")

LOG_KIND = "log"
CHANGE_KIND = "change"
# The events a change announcement may carry (anything else is ignored).
CHANGE_EVENTS = frozenset({"message_update", "message_deleted"})
# Rows one announcement may make this process build from the index; more: ``resync``.
MAX_GAP = 200
# Rooms remembered per map (LRU); a forgotten room starts again from its next announcement.
REMEMBERED_ROOMS = 50_000


def conversation_update(conversation_id: str, message: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": conversation_id,
        "lastMessage": message.get("content"),
        "lastMessageTime": message.get("createdAt"),
    }


class _Seqs(OrderedDict[str, int]):
    """Per room, a seq that only moves forward; the least recently moved rooms are dropped
    past ``REMEMBERED_ROOMS``."""

    def raise_to(self, room_id: str, seq: int) -> None:
        if seq > self.get(room_id, -1):
            self[room_id] = seq
        self.move_to_end(room_id)
        while len(self) > REMEMBERED_ROOMS:
            self.popitem(last=False)


class DeliveryLog:
    def __init__(
        self,
        app: web.Application,
        sio: socketio.AsyncServer,
        marks: PublishedMarkStore,
        lanes: Lanes,
        sockets: LocalSockets,
    ) -> None:
        self.app = app
        self.sio = sio
        self.sockets = sockets
        self.marks = marks
        self.lanes = lanes
        self.known = _Seqs()  # highest seq known to be announced, per room
        self.delivered = _Seqs()  # highest seq this process's sockets were given, per room
        self._due: dict[str, int] = {}  # marks to write
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._suspects: dict[str, int] = {}  # rooms the last look found behind

    # Publishing.
    async def published(self, room_id: str, seq: int) -> bool:
        """Whether ``seq`` was announced already (from memory, else the room's mark)."""
        if (known := self.known.get(room_id)) is None or known < seq:
            self.known.raise_to(room_id, await self.marks.get(room_id))
        return seq <= self.known.get(room_id, 0)

    async def publish(
        self, room_id: str, seq: int, message: dict[str, Any] | None, *, fresh: bool = False
    ) -> bool:
        """Announce the room's log up to ``seq`` unless it was; ``fresh``: the caller just
        created the row, so nobody announced it yet. True when this call announced."""
        if not fresh and await self.published(room_id, seq):
            return False
        failpoint("log.indexed")
        messages = {str(seq): message} if message is not None else {}
        payload = {"kind": LOG_KIND, "room": room_id, "upto": seq, "messages": messages}
        await self.sio.emit(CONTROL_EVENT, payload, to=CONTROL_ROOM)
        self._mark_later(room_id, seq)
        return True

    def _mark_later(self, room_id: str, seq: int) -> None:
        self.known.raise_to(room_id, seq)
        if seq > self._due.get(room_id, -1):
            self._due[room_id] = seq
        self._wake.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_marks(), name="delivery-log-marks")

    async def _write_marks(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0.02)  # a burst's announcements: one batch
            await self.write_marks()

    async def write_marks(self) -> None:
        """Write the marks of what was announced, once it reached every process."""
        due, self._due = self._due, {}
        if not due:
            return
        manager = self.sio.manager
        if isinstance(manager, BridgeRedisManager) and not await manager.flush():
            # Some announcement may not have left: the marks wait for the next batch (if it
            # never leaves, the gap is announced again by recover, no socket sees it twice).
            await self._requeue(due)
            return
        failpoint("log.published")
        try:
            await self.marks.advance(due)
        except Exception as e:
            log.warning("Could not write the published marks (%r); retrying", e)
            await self._requeue(due)

    async def _requeue(self, due: dict[str, int]) -> None:
        """Marks not written: kept for the next batch, tried again in a second."""
        for room_id, seq in due.items():
            self._due[room_id] = max(seq, self._due.get(room_id, -1))
        await asyncio.sleep(1.0)
        self._wake.set()

    async def recover(self, active_since: int = 0) -> int:
        """Announce every conversation (active since ``active_since``, ms) whose newest
        indexed row is past its mark and that nobody announced: each process then delivers
        those rows from the index. One heard announced here only has its mark written."""
        behind = await self.marks.behind(active_since)
        # Found behind by two looks in a row: not a message whose announcement is on its way.
        suspects, self._suspects = self._suspects, behind
        announced = 0
        for room_id, newest in behind.items():
            if self.known.get(room_id, -1) >= newest:
                self._mark_later(room_id, newest)  # heard on the channel: every process has
                continue
            if active_since and suspects.get(room_id) != newest:
                continue
            self.known.pop(room_id, None)
            announced += await self.publish(room_id, newest, None)
        if announced:
            log.info("Announced %d conversations whose messages were not announced", announced)
        return announced

    async def change(self, room_id: str, event: str, data: dict[str, Any]) -> None:
        """Announce a change to messages of the log (an edit, a delete): every process
        emits it from the room's delivery lane, after the messages announced before it."""
        payload = {"kind": CHANGE_KIND, "room": room_id, "event": event, "data": data}
        await self.sio.emit(CONTROL_EVENT, payload, to=CONTROL_ROOM)

    # Delivering, in each process.
    async def change_arrived(self, payload: dict[str, Any]) -> None:
        room_id, event, data = payload.get("room"), payload.get("event"), payload.get("data")
        if not isinstance(room_id, str) or event not in CHANGE_EVENTS or not isinstance(data, dict):
            return
        room = conversation_room(conversation_id_for_room(room_id))

        async def emit() -> None:
            if self._has_sockets(room):
                await self.sio.emit(str(event), data, to=room, ignore_queue=True)

        self.lanes.submit(room_id, emit)

    async def arrived(self, payload: dict[str, Any]) -> None:
        """An announcement (ours or another process's): queued on the room's lane."""
        room_id, upto = payload.get("room"), payload.get("upto")
        messages = payload.get("messages")
        if not isinstance(room_id, str) or not isinstance(upto, int) or upto < 0:
            return
        self.known.raise_to(room_id, upto)
        found = messages if isinstance(messages, dict) else {}
        self.lanes.submit(room_id, lambda: self._deliver(room_id, upto, found))

    async def entering(self, room_ids: list[str]) -> None:
        """Sockets of this process are about to enter these conversations' rooms: one this
        process delivers nothing in yet starts at its newest seq now (its baseline). Called
        before the socket enters (and before connect or ``join_conversation`` answers), so
        a row at or below the baseline was indexed before the client's catch-up, and one
        after it is delivered. By seq, never by time: ``origin_ts`` is the sender's clock."""
        missing = [room_id for room_id in room_ids if room_id not in self.delivered]
        if not missing:
            return
        newest = await self.app[EVENT_INDEX].newest_seqs(missing)
        for room_id in missing:
            if room_id not in self.delivered:  # a delivery may have set it meanwhile
                self.delivered.raise_to(room_id, newest.get(room_id, 0))

    def _has_sockets(self, room: str) -> bool:
        return next(iter(self.sio.manager.get_participants("/", room)), None) is not None

    async def _deliver(self, room_id: str, upto: int, messages: dict[str, Any]) -> None:
        done = self.delivered.get(room_id)
        if done is not None and upto <= done:
            return  # announced again: delivered already
        conversation_id = conversation_id_for_room(room_id)
        room = conversation_room(conversation_id)
        if not self._has_sockets(room):
            self.delivered.raise_to(room_id, upto)
            return
        index = self.app[EVENT_INDEX]
        if done is None:
            # Sockets here with no baseline (they entered through another process, or the
            # room was forgotten): this process first learns of the room now, so it starts
            # at the first row of this announcement.
            announced = [int(seq) for seq in messages if str(seq).isdigit()]
            done = min([*announced, upto]) - 1
        rows = await index.between(room_id, done, upto)
        if len(rows) > MAX_GAP:
            log.warning("%d messages of %s to fill from the index: resync", len(rows), room_id)
            self.delivered.raise_to(room_id, upto)
            await self.resync(room_id, "overflow")
            return
        for row in rows:
            message = messages.get(str(row.seq)) or await self._build(row)
            if message is not None:
                failpoint("log.lane")
                await self._emit(conversation_id, room, message, row.seq)
            self.delivered.raise_to(room_id, row.seq)
        self.delivered.raise_to(room_id, upto)

    async def _build(self, row: RoomEvent) -> dict[str, Any] | None:
        """A message nobody announced with its object: from the body cache or Matrix."""
        if CHAT not in self.app:
            return None
        chat = self.app[CHAT]
        event = chat.events.get(row.event_id)
        if event is None:
            conversation = await chat.conversation_by_room(row.room_id)
            if conversation is None:
                return None
            reader = await chat.reader_of(conversation)
            event = await chat.fetch_event(row.room_id, row.event_id, reader)
        if not event or not event.get("content"):
            return None  # redacted meanwhile, or hidden from us
        return await chat.message_from_event({**event, "room_id": row.room_id})

    async def _emit(
        self, conversation_id: str, room: str, message: dict[str, Any], seq: int
    ) -> None:
        payload = {**message, "conversationId": conversation_id, "cursor": cursor_of(seq)}
        # This process's sockets only: every process delivers the log to its own.
        await self.sio.emit("new_message", payload, to=room, ignore_queue=True)
        update = conversation_update(conversation_id, payload)
        await self.sio.emit("conversation_update", update, to=room, ignore_queue=True)

    async def resync(self, room_id: str, reason: str) -> None:
        """This process could not deliver a room's log (its lane dropped a job, or the
        database failed): its sockets there refetch. Where it was stays: the next
        announcement delivers from there, the rows that failed included, never twice."""
        if not room_id.startswith("!"):
            return
        if reason != "overflow" and hasattr(self.sio.manager, "delivery_failed"):
            self.sio.manager.delivery_failed()  # /health/ready says so for a while
        conversation_id = conversation_id_for_room(room_id)
        payload = {"conversationId": conversation_id, "reason": reason}
        await self.sio.emit(
            "resync", payload, to=conversation_room(conversation_id), ignore_queue=True
        )

    async def forget_delivered(self) -> None:
        """This process's sockets were all closed (a Redis recovery): they catch up from their
        cursors, so delivery starts again from the next announcement of each room."""
        self.delivered.clear()

    async def close(self, timeout: float) -> None:
        """Shutdown: deliver what is queued (bounded), then write the marks."""
        try:
            await asyncio.wait_for(self.lanes.drain(), timeout)
        except TimeoutError:
            log.warning("Stopped with real-time deliveries queued; other processes have them")
        await self.lanes.stop()
        try:
            await asyncio.wait_for(self.write_marks(), 2.0)
        except Exception as e:
            log.warning("Could not write the published marks at shutdown (%r)", e)
        if self._writer is not None:
            await stop(self._writer)
