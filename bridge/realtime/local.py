"""This process's open sockets: who each one is, and each user's sockets here."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ..db.crm_user import CrmUser


@dataclass
class Socket:
    user: CrmUser
    # Rooms where this socket set the user typing, cleared on disconnect.
    typing_in: set[str] = field(default_factory=set)
    # Fires when the socket's token expires.
    expiry: asyncio.TimerHandle | None = None
    # Set when access ended while the socket was still connecting: the connect is refused.
    refused: dict[str, str] | None = None


class LocalSockets:
    def __init__(self) -> None:
        # Open sockets only: an entry leaves on disconnect (a user's when their last goes).
        self._by_sid: dict[str, Socket] = {}
        self._by_user: dict[str, set[str]] = {}

    def add(self, sid: str, socket: Socket) -> None:
        self._by_sid[sid] = socket
        self._by_user.setdefault(socket.user.crm_user_id, set()).add(sid)

    def pop(self, sid: str) -> Socket | None:
        socket = self._by_sid.pop(sid, None)
        if socket is not None:
            sids = self._by_user.get(socket.user.crm_user_id)
            if sids is not None:
                sids.discard(sid)
                if not sids:
                    del self._by_user[socket.user.crm_user_id]
            if socket.expiry is not None:
                socket.expiry.cancel()
        return socket

    def get(self, sid: str) -> Socket | None:
        return self._by_sid.get(sid)

    def of_user(self, crm_user_id: str) -> list[str]:
        return list(self._by_user.get(crm_user_id, ()))

    def __len__(self) -> int:
        return len(self._by_sid)
