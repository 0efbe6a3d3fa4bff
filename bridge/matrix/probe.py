"""The bot's probe room: an event there makes the homeserver send us a transaction now.

Gap recovery (gaps.py) fetches a transaction Synapse stranded by refusing the next one,
but in quiet rooms no next one comes, and a stranded transaction that was the last of a
burst does not even show as a gap. So the receiver sends a probe event into a room of the
bot's own: its transaction reveals a trailing gap, and is the one refused when a gap is
due. The room holds the bot alone (nobody reads it, no CRM user is in it); its id is kept
in the bot's account data, so every process finds the same room.
"""

from __future__ import annotations

import logging
import time

from mautrix.types import RoomID

from .client import MatrixClient
from .homeserver import MatrixError

log = logging.getLogger("bridge.matrix.probe")

ROOM_KEY = "com.crm.bridge.probe_room"  # the bot's account data: {"room_id": ...}
PROBE_EVENT = "com.crm.bridge.probe"


class ProbeRoom:
    def __init__(self, matrix: MatrixClient) -> None:
        self.matrix = matrix
        self._room_id: RoomID | None = None

    async def send(self) -> None:
        """One probe event (a new one after the room was lost: left, or purged)."""
        content = {"at": int(time.time() * 1000)}
        room_id = await self._room()
        try:
            await self.matrix.send_event(room_id, PROBE_EVENT, content)
        except MatrixError as e:
            if e.status not in (403, 404):
                raise
            log.warning("The probe room %s is gone (%s); making a new one", room_id, e.errcode)
            self._room_id = None
            await self.matrix.send_event(await self._room(create=True), PROBE_EVENT, content)

    async def _room(self, create: bool = False) -> RoomID:
        if self._room_id is not None:
            return self._room_id
        bot = self.matrix.bot_mxid
        if not create:
            stored = (await self.matrix.get_account_data(bot, ROOM_KEY)).get("room_id")
            if isinstance(stored, str) and stored.startswith("!"):
                self._room_id = RoomID(stored)
                return self._room_id
        body = {
            "preset": "private_chat",
            "visibility": "private",
            "creation_content": {"m.federate": False},
            "name": "CRM bridge: delivery probe",
            "topic": "The bridge sends events here to fetch transactions the homeserver held back.",
        }
        self._room_id = await self.matrix.create_room(body)
        await self.matrix.set_account_data(bot, ROOM_KEY, {"room_id": self._room_id})
        log.info("Made the probe room %s", self._room_id)
        return self._room_id
