"""The bot's probe room: an event there makes the homeserver send us a transaction now.

Gap recovery (gaps.py) fetches a transaction Synapse stranded by refusing the next one,
but in quiet rooms no next one comes, and a stranded transaction that was the last of a
burst does not even show as a gap. So the receiver sends a probe event into a room of the
bot's own: its transaction reveals a trailing gap, and is the one refused when a gap is
due. The room holds the bot alone (nobody reads it, no CRM user is in it) and does not
federate. It is found by an alias in our namespace that no project can have, made with
the room: a process killed while making it leaves no second room behind.
"""

from __future__ import annotations

import logging
import time

from mautrix.types import RoomAlias, RoomID

from .client import MatrixClient
from .homeserver import MatrixError

log = logging.getLogger("bridge.matrix.probe")

PROBE_EVENT = "com.crm.bridge.probe"
ALIAS_NAME = "bridge-probe"  # IdMapper.reserved_alias


class ProbeRoom:
    def __init__(self, matrix: MatrixClient, alias: RoomAlias) -> None:
        self.matrix = matrix
        self.alias = alias
        self._room_id: RoomID | None = None

    async def send(self) -> None:
        """One probe event (into a new room after the old one was lost: left, or purged)."""
        content = {"at": int(time.time() * 1000)}
        room_id = await self._room()
        try:
            await self.matrix.send_event(room_id, PROBE_EVENT, content)
        except MatrixError as e:
            if e.status not in (403, 404):
                raise
            log.warning("The probe room %s is gone (%s); making a new one", room_id, e.errcode)
            self._room_id = None
            await self.matrix.delete_alias(self.alias)  # it would lead back to the lost room
            await self.matrix.send_event(await self._room(), PROBE_EVENT, content)

    async def _room(self) -> RoomID:
        if self._room_id is None:
            self._room_id = await self.matrix.resolve_alias(self.alias) or await self._make()
        return self._room_id

    async def _make(self) -> RoomID:
        localpart = self.alias.removeprefix("#").partition(":")[0]
        body = {
            "preset": "private_chat",
            "visibility": "private",
            "room_alias_name": localpart,
            "creation_content": {"m.federate": False},
            "name": "CRM bridge: delivery probe",
            "topic": "The bridge sends events here to fetch transactions the homeserver held back.",
        }
        try:
            room_id = await self.matrix.create_room(body)
        except MatrixError as e:
            if e.errcode != "M_ROOM_IN_USE":
                raise
            # Made meanwhile (another receiver before us), or left by us with its alias.
            found = await self.matrix.resolve_alias(self.alias)
            if found is None:
                raise
            return found
        log.info("Made the probe room %s (%s)", room_id, self.alias)
        return room_id
