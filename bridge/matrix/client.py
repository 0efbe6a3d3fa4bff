"""Typed client-server calls the bridge makes, as the bot or as a puppet.

Everything goes through :class:`Homeserver`, so retries, rate limits and write counting
apply everywhere. Methods take ``as_user`` (an mxid in our namespace) to act as a puppet;
without it they act as the bridge bot.
"""

from __future__ import annotations

import time
from typing import Any

from mautrix.types import EventID, RoomAlias, RoomID, UserID

from .homeserver import Homeserver, MatrixError, q

C = "/_matrix/client/v3"


class MatrixClient:
    def __init__(self, hs: Homeserver, appservice_id: str, bot_mxid: UserID) -> None:
        self.hs = hs
        self.appservice_id = appservice_id
        self.bot_mxid = bot_mxid
        self._txn = 0

    def txn_id(self) -> str:
        self._txn += 1
        return f"crm{time.time_ns()}.{self._txn}"

    # Server and account.
    async def versions(self) -> dict[str, Any]:
        return await self.hs.get("/_matrix/client/versions")

    async def whoami(self, as_user: str | None = None) -> UserID:
        body = await self.hs.get(f"{C}/account/whoami", as_user=as_user)
        return UserID(body["user_id"])

    async def ping(self, transaction_id: str | None = None) -> int:
        """Ask the homeserver to ping us back; returns the round trip in ms."""
        body = {"transaction_id": transaction_id} if transaction_id else {}
        path = f"/_matrix/client/v1/appservice/{q(self.appservice_id)}/ping"
        resp = await self.hs.post(path, body)
        return int(resp.get("duration_ms", 0))

    async def register_puppet(self, localpart: str) -> bool:
        """Register an appservice user; returns False when it already existed."""
        try:
            await self.hs.post(
                f"{C}/register",
                {
                    "type": "m.login.application_service",
                    "username": localpart,
                    "inhibit_login": True,
                },
            )
            return True
        except MatrixError as e:
            if e.errcode == "M_USER_IN_USE":
                return False
            raise

    async def set_displayname(self, mxid: UserID, name: str) -> None:
        await self.hs.put(f"{C}/profile/{q(mxid)}/displayname", {"displayname": name}, as_user=mxid)

    async def set_avatar_url(self, mxid: UserID, mxc: str) -> None:
        await self.hs.put(f"{C}/profile/{q(mxid)}/avatar_url", {"avatar_url": mxc}, as_user=mxid)

    async def get_profile(self, mxid: str) -> dict[str, Any]:
        try:
            return await self.hs.get(f"{C}/profile/{q(mxid)}")
        except MatrixError as e:
            if e.status == 404:
                return {}
            raise

    async def set_account_data(self, mxid: UserID, kind: str, content: dict[str, Any]) -> None:
        await self.hs.put(f"{C}/user/{q(mxid)}/account_data/{q(kind)}", content, as_user=mxid)

    async def get_account_data(self, mxid: UserID, kind: str) -> dict[str, Any]:
        try:
            return await self.hs.get(f"{C}/user/{q(mxid)}/account_data/{q(kind)}", as_user=mxid)
        except MatrixError as e:
            if e.status == 404:
                return {}
            raise

    async def set_room_account_data(
        self, mxid: UserID, room_id: RoomID, kind: str, content: dict[str, Any]
    ) -> None:
        path = f"{C}/user/{q(mxid)}/rooms/{q(room_id)}/account_data/{q(kind)}"
        await self.hs.put(path, content, as_user=mxid)

    async def get_room_account_data(
        self, mxid: UserID, room_id: RoomID, kind: str
    ) -> dict[str, Any]:
        path = f"{C}/user/{q(mxid)}/rooms/{q(room_id)}/account_data/{q(kind)}"
        try:
            return await self.hs.get(path, as_user=mxid)
        except MatrixError as e:
            if e.status == 404:
                return {}
            raise

    # Rooms.
    async def create_room(self, body: dict[str, Any], as_user: str | None = None) -> RoomID:
        # Not retried on 5xx: the room may exist already, and a retry would make a second one.
        resp = await self.hs.post(f"{C}/createRoom", body, as_user=as_user, idempotent=False)
        return RoomID(resp["room_id"])

    async def resolve_alias(self, alias: RoomAlias) -> RoomID | None:
        try:
            resp = await self.hs.get(f"{C}/directory/room/{q(alias)}")
        except MatrixError as e:
            if e.status == 404:
                return None
            raise
        return RoomID(resp["room_id"])

    async def delete_alias(self, alias: RoomAlias) -> None:
        await self.hs.request("DELETE", f"{C}/directory/room/{q(alias)}")

    async def invite(self, room_id: RoomID, mxid: str, as_user: str | None = None) -> None:
        await self.hs.post(f"{C}/rooms/{q(room_id)}/invite", {"user_id": mxid}, as_user=as_user)

    async def join(self, room_id: RoomID, as_user: str) -> None:
        await self.hs.post(f"{C}/rooms/{q(room_id)}/join", {}, as_user=as_user)

    async def leave(self, room_id: RoomID, as_user: str) -> None:
        await self.hs.post(f"{C}/rooms/{q(room_id)}/leave", {}, as_user=as_user)

    async def kick(
        self, room_id: RoomID, mxid: str, reason: str, as_user: str | None = None
    ) -> None:
        await self.hs.post(
            f"{C}/rooms/{q(room_id)}/kick", {"user_id": mxid, "reason": reason}, as_user=as_user
        )

    async def get_state(self, room_id: RoomID, as_user: str | None = None) -> list[dict[str, Any]]:
        return await self.hs.get(f"{C}/rooms/{q(room_id)}/state", as_user=as_user)

    async def get_state_event(
        self, room_id: RoomID, event_type: str, state_key: str = "", as_user: str | None = None
    ) -> dict[str, Any] | None:
        try:
            return await self.hs.get(
                f"{C}/rooms/{q(room_id)}/state/{q(event_type)}/{q(state_key)}", as_user=as_user
            )
        except MatrixError as e:
            if e.status == 404:
                return None
            raise

    async def send_state(
        self,
        room_id: RoomID,
        event_type: str,
        content: dict[str, Any],
        state_key: str = "",
        as_user: str | None = None,
    ) -> EventID:
        resp = await self.hs.put(
            f"{C}/rooms/{q(room_id)}/state/{q(event_type)}/{q(state_key)}", content, as_user=as_user
        )
        return EventID(resp["event_id"])

    async def joined_members(
        self, room_id: RoomID, as_user: str | None = None
    ) -> dict[str, dict[str, Any]]:
        resp = await self.hs.get(f"{C}/rooms/{q(room_id)}/joined_members", as_user=as_user)
        return resp.get("joined", {})

    async def joined_rooms(self, as_user: str) -> list[RoomID]:
        resp = await self.hs.get(f"{C}/joined_rooms", as_user=as_user)
        return [RoomID(r) for r in resp.get("joined_rooms", [])]

    # Messages and ephemeral data.
    async def send_event(
        self,
        room_id: RoomID,
        event_type: str,
        content: dict[str, Any],
        as_user: str | None = None,
        txn_id: str | None = None,
    ) -> EventID:
        path = f"{C}/rooms/{q(room_id)}/send/{q(event_type)}/{q(txn_id or self.txn_id())}"
        resp = await self.hs.put(path, content, as_user=as_user)
        return EventID(resp["event_id"])

    async def redact(
        self,
        room_id: RoomID,
        event_id: str,
        as_user: str | None = None,
        reason: str | None = None,
        txn_id: str | None = None,
    ) -> EventID:
        body = {"reason": reason} if reason else {}
        path = f"{C}/rooms/{q(room_id)}/redact/{q(event_id)}/{q(txn_id or self.txn_id())}"
        resp = await self.hs.put(path, body, as_user=as_user)
        return EventID(resp["event_id"])

    async def messages(
        self,
        room_id: RoomID,
        *,
        direction: str = "b",
        limit: int = 50,
        from_token: str | None = None,
        as_user: str | None = None,
        filter_json: str | None = None,
    ) -> dict[str, Any]:
        params = {"dir": direction, "limit": str(limit)}
        if from_token:
            params["from"] = from_token
        if filter_json:
            params["filter"] = filter_json
        return await self.hs.get(f"{C}/rooms/{q(room_id)}/messages", params=params, as_user=as_user)

    async def get_event(
        self, room_id: RoomID, event_id: str, as_user: str | None = None
    ) -> dict[str, Any]:
        return await self.hs.get(f"{C}/rooms/{q(room_id)}/event/{q(event_id)}", as_user=as_user)

    async def context(
        self, room_id: RoomID, event_id: str, limit: int = 0, as_user: str | None = None
    ) -> dict[str, Any]:
        return await self.hs.get(
            f"{C}/rooms/{q(room_id)}/context/{q(event_id)}",
            params={"limit": str(limit)},
            as_user=as_user,
        )

    async def search(
        self, body: dict[str, Any], next_batch: str | None = None, as_user: str | None = None
    ) -> dict[str, Any]:
        """The client-server ``/search`` (server-side full text search) as a puppet."""
        params = {"next_batch": next_batch} if next_batch else None
        # A POST that changes nothing: safe to retry.
        return await self.hs.post(f"{C}/search", body, params=params, as_user=as_user)

    async def set_typing(self, room_id: RoomID, mxid: UserID, timeout_ms: int) -> None:
        body: dict[str, Any] = {"typing": timeout_ms > 0}
        if timeout_ms > 0:
            body["timeout"] = timeout_ms
        await self.hs.put(f"{C}/rooms/{q(room_id)}/typing/{q(mxid)}", body, as_user=mxid)

    async def send_receipt(
        self, room_id: RoomID, event_id: str, mxid: UserID, receipt_type: str = "m.read"
    ) -> None:
        await self.hs.post(
            f"{C}/rooms/{q(room_id)}/receipt/{q(receipt_type)}/{q(event_id)}", {}, as_user=mxid
        )

    async def set_read_markers(self, room_id: RoomID, event_id: str, mxid: UserID) -> None:
        await self.hs.post(
            f"{C}/rooms/{q(room_id)}/read_markers",
            {"m.fully_read": event_id, "m.read": event_id},
            as_user=mxid,
        )

    async def set_presence(
        self, mxid: UserID, presence: str, status_msg: str | None = None
    ) -> None:
        body: dict[str, Any] = {"presence": presence}
        if status_msg is not None:
            body["status_msg"] = status_msg
        await self.hs.put(f"{C}/presence/{q(mxid)}/status", body, as_user=mxid)

    async def get_presence(self, mxid: str) -> dict[str, Any]:
        return await self.hs.get(f"{C}/presence/{q(mxid)}/status")

    # Media.
    async def upload(
        self,
        data: bytes,
        content_type: str,
        filename: str | None = None,
        as_user: str | None = None,
    ) -> str:
        params = {"filename": filename} if filename else None
        resp = await self.hs.request(
            "POST",
            "/_matrix/media/v3/upload",
            data=data,
            content_type=content_type,
            params=params,
            as_user=as_user,
        )
        return resp["content_uri"]

    async def download(self, mxc: str) -> tuple[bytes, str]:
        server, _, media_id = mxc.removeprefix("mxc://").partition("/")
        return await self.hs.request(
            "GET", f"/_matrix/client/v1/media/download/{q(server)}/{q(media_id)}", raw=True
        )
