"""python-socketio client managers with two additions of ours.

* Control messages between this deployment's processes ride the manager's own channel (the
  Redis pub/sub that carries emits), so they are ordered with the emits around them: a
  revocation published before a message is handled before that message in every process.
* A gate checked at delivery, in each process, for its own sockets: a conversation's events
  reach only sockets whose user takes part in it, even if a socket's room membership went
  stale (a lost pub/sub message, a join racing a removal).

``_handle_emit`` is where python-socketio's pub/sub manager delivers an emit locally (for
its own emits and for those of other processes alike).
"""

from __future__ import annotations

from typing import Any, Protocol

import socketio

from .rooms import is_conversation_room

CONTROL_EVENT = "bridge:control"
# No socket ever joins it: if a control message were delivered as an event, nobody gets it.
CONTROL_ROOM = "bridge:control"


class Gate(Protocol):
    async def control(self, payload: dict[str, Any]) -> None:
        """Act on a control message in this process."""

    async def blocked(self, namespace: str, rooms: list[str]) -> set[str]:
        """This process's sockets in these rooms that must not get the event."""


def _rooms(room: Any) -> list[str]:
    if isinstance(room, str):
        return [room]
    return [r for r in room or [] if isinstance(r, str)]


class _Gated:
    gate: Gate | None = None

    async def _skip(self, namespace: str | None, room: Any, skip_sid: Any) -> Any:
        rooms = _rooms(room)
        if self.gate is None or not any(is_conversation_room(r) for r in rooms):
            return skip_sid
        blocked = await self.gate.blocked(namespace or "/", rooms)
        if not blocked:
            return skip_sid
        skip = skip_sid if isinstance(skip_sid, list) else [] if skip_sid is None else [skip_sid]
        return [*skip, *sorted(blocked)]

    async def _control(self, data: Any) -> None:
        payload = data[0] if isinstance(data, list | tuple) and data else data
        if self.gate is not None and isinstance(payload, dict):
            await self.gate.control(payload)


class GatedManager(_Gated, socketio.AsyncManager):
    """One process, no Redis."""

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
        skip_sid = await self._skip(namespace, room, skip_sid)
        await super().emit(
            event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs
        )


class GatedRedisManager(_Gated, socketio.AsyncRedisManager):
    """Several processes sharing a Redis channel."""

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        if message.get("event") == CONTROL_EVENT:
            return await self._control(message.get("data"))
        skip = await self._skip(
            message.get("namespace"), message.get("room"), message.get("skip_sid")
        )
        await super()._handle_emit({**message, "skip_sid": skip})
