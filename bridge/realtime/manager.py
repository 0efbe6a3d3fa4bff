"""The gate and the control messages, on top of either Socket.IO manager: one process
(``GatedManager``) or several over Redis (``GatedRedisManager``, transport.py).

* Control messages between this deployment's processes ride the manager's own channel, so
  they are ordered with the emits around them: a revocation published before a message is
  handled before that message in every process. The delivery log's announcements
  (``kind: "log"``, log.py) are control messages too.
* A gate checked at delivery, in each process, for its own sockets: a conversation's events
  reach only sockets whose user takes part in it, even if a socket's room membership went
  stale (a lost pub/sub message, a join racing a removal). The gate adds the sockets it
  holds back to the emit's ``skip_sid``: in ``emit`` for this process's own emits, and in
  ``_arrived`` for other processes' emits before python-socketio delivers them here.
* Events that carry media URLs (the gate says which) are delivered socket by socket, each
  with a copy signed for its own user (bridge/chat/media_urls.py): through the base class's
  ``AsyncManager.emit`` to one sid, which delivers here only. Other processes get the
  shared payload and do the same for their own sockets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import socketio

from .rooms import conversation_of_room, is_conversation_room
from .transport import BridgeRedisManager, _payload

log = logging.getLogger("bridge.realtime.manager")

CONTROL_EVENT = "bridge:control"
# No socket ever joins it: if a control message were delivered as an event, nobody gets it.
CONTROL_ROOM = "bridge:control"
# How long a database error in delivery keeps the process reported degraded.
DEGRADED_FOR = 30.0
# The one event the gate lets through unchecked.
UNGATED_EVENT = "resync"


class Gate(Protocol):
    async def control(self, payload: dict[str, Any]) -> None:
        """Act on a control message in this process."""

    async def blocked(self, namespace: str, rooms: list[str]) -> set[str]:
        """This process's sockets in these rooms that must not get the event."""

    def personal(self, event: str, data: Any) -> bool:
        """Whether each socket gets a copy of its own (media URLs signed for its user)."""

    def copies_for(self, data: Any, sids: list[str]) -> list[tuple[Any, list[str]]]:
        """The copy of ``data`` for each group of this process's sockets."""


def _rooms(room: Any) -> list[str]:
    if isinstance(room, str):
        return [room]
    return [r for r in room or [] if isinstance(r, str)]


ControlHandler = Callable[[dict[str, Any]], Awaitable[None]]


class _Gated:
    gate: Gate | None = None
    # Control messages of other kinds than the gate's (the delivery log's ``log``).
    handlers: dict[str, ControlHandler]
    # When a database error last kept this process from delivering an event (the gate in
    # the listener, or the delivery log's lane): reported degraded for DEGRADED_FOR.
    failed_at: float | None = None

    def delivery_failed(self) -> None:
        self.failed_at = time.monotonic()

    @property
    def degraded(self) -> bool:
        at = self.failed_at
        return at is not None and time.monotonic() - at < DEGRADED_FOR

    async def _skip(
        self, namespace: str | None, room: Any, skip_sid: Any, event: Any = None
    ) -> Any:
        rooms = _rooms(room)
        if self.gate is None or not any(is_conversation_room(r) for r in rooms):
            return skip_sid
        if event == UNGATED_EVENT:
            # Content-free ("refetch this conversation"), and sent when the database that
            # the gate reads may be what failed.
            return skip_sid
        blocked = await self.gate.blocked(namespace or "/", rooms)
        if not blocked:
            return skip_sid
        skip = skip_sid if isinstance(skip_sid, list) else [] if skip_sid is None else [skip_sid]
        return [*skip, *sorted(blocked)]

    async def _control(self, data: Any) -> None:
        payload = _payload(data)
        if not isinstance(payload, dict):
            return
        handler = self.handlers.get(str(payload.get("kind")))
        if handler is not None:
            await handler(payload)
        elif self.gate is not None:
            await self.gate.control(payload)

    def _personal(self, event: str, data: Any, room: Any, callback: Any) -> bool:
        return (
            self.gate is not None
            and callback is None
            and bool(_rooms(room))
            and self.gate.personal(event, data)
        )

    async def _deliver_each(
        self, event: str, data: Any, namespace: str | None, room: Any, skip_sid: Any
    ) -> None:
        """This process's sockets in ``room``, each with its own user's copy (one encoding
        per user, not one per emit: only events that carry media URLs come here)."""
        assert self.gate is not None
        namespace = namespace or "/"
        skip = set(skip_sid if isinstance(skip_sid, list) else [skip_sid] if skip_sid else [])
        sids: dict[str, None] = {}
        for name in _rooms(room):
            for sid, _ in self.get_participants(namespace, name):  # type: ignore[attr-defined]
                if sid not in skip:
                    sids[sid] = None
        for copy, group in self.gate.copies_for(data, list(sids)):
            for sid in group:
                # The base class's emit: this process's socket only, never published.
                await socketio.AsyncManager.emit(self, event, copy, namespace, room=sid)  # type: ignore[arg-type]


class GatedManager(_Gated, socketio.AsyncManager):
    """One process, no Redis."""

    def __init__(self) -> None:
        super().__init__()
        self.handlers = {}

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        room = to or room
        if event == CONTROL_EVENT:
            return await self._control(data)
        skip_sid = await self._skip(namespace, room, skip_sid, event)
        if self._personal(event, data, room, callback):
            return await self._deliver_each(event, data, namespace, room, skip_sid)
        await super().emit(
            event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs
        )


class GatedRedisManager(_Gated, BridgeRedisManager):
    """Several processes sharing a Redis channel: our own emits are gated before
    python-socketio delivers them here and publishes them; other processes' as they arrive
    (each process skips only its own sockets, whose ids are unique)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handlers = {}

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str | None = None,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        room = to or room
        if event == CONTROL_EVENT:
            await self._control(data)  # here, then to the other processes (CONTROL_ROOM)
        else:
            skip_sid = await self._skip(namespace, room, skip_sid, event)
            if self._personal(event, data, room, callback):
                # Our sockets get their own copies; the others' processes make theirs
                # from the shared one (``_arrived``).
                await self._deliver_each(event, data, namespace, room, skip_sid)
                if not kwargs.get("ignore_queue"):
                    await self._publish(
                        {"method": "emit", "event": event, "data": [data], "binary": False,
                         "namespace": namespace or "/", "room": room, "skip_sid": skip_sid,
                         "callback": None, "host_id": self.host_id}
                    )  # fmt: skip
                return
        await super().emit(
            event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs
        )

    async def _arrived(self, data: Any) -> Any:
        if (
            not isinstance(data, dict)
            or data.get("method") != "emit"
            or data.get("host_id") == self.host_id
        ):
            return data
        if data.get("event") == CONTROL_EVENT:
            await self._control(data.get("data"))
            return None
        skip = await self._skip(
            data.get("namespace"), data.get("room"), data.get("skip_sid"), data.get("event")
        )
        event, payload = str(data.get("event")), _payload(data.get("data"))
        if not data.get("binary") and self._personal(
            event, payload, data.get("room"), data.get("callback")
        ):
            await self._deliver_each(event, payload, data.get("namespace"), data.get("room"), skip)
            return None
        return {**data, "skip_sid": skip}

    async def _listener_failed(self, data: Any, error: Exception) -> None:
        """The gate could not read the database (a failover): this process cannot tell
        which of its sockets may get the event, so none does, the conversation's sockets
        here hear ``resync``, and the process reports itself degraded for a while."""
        self.delivery_failed()
        log.warning("Could not deliver another process's event here (%r): resync", error)
        if not isinstance(data, dict) or data.get("event") == CONTROL_EVENT:
            return
        for room in _rooms(data.get("room")):
            if is_conversation_room(room):
                payload = {"conversationId": conversation_of_room(room), "reason": "failed"}
                # This process's sockets only: no gate (it cannot read the database either).
                await socketio.AsyncManager.emit(self, "resync", payload, "/", room=room)
