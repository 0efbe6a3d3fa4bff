"""Client retry keys of /send (table ``client_message``): one message per clientMessageId."""

from __future__ import annotations

from dataclasses import dataclass

from mautrix.util.async_db import Database

from .crm_user import now_ms


@dataclass
class ClientMessage:
    crm_user_id: str
    client_message_id: str
    conversation_id: str
    event_id: str
    created_at: int


class ClientMessageStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, crm_user_id: str, client_message_id: str) -> ClientMessage | None:
        row = await self.db.fetchrow(
            "SELECT crm_user_id, client_message_id, conversation_id, event_id, created_at "
            "FROM client_message WHERE crm_user_id=$1 AND client_message_id=$2",
            crm_user_id, client_message_id,
        )  # fmt: skip
        return ClientMessage(**row) if row else None

    async def put(
        self, crm_user_id: str, client_message_id: str, conversation_id: str, event_id: str
    ) -> ClientMessage:
        """Record the key; if a concurrent retry got there first, return its row."""
        await self.db.execute(
            "INSERT INTO client_message (crm_user_id, client_message_id, conversation_id, "
            "event_id, created_at) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (crm_user_id, client_message_id) DO NOTHING",
            crm_user_id, client_message_id, conversation_id, event_id, now_ms(),
        )  # fmt: skip
        row = await self.get(crm_user_id, client_message_id)
        assert row is not None
        return row
