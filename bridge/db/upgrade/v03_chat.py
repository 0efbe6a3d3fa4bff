"""Schema changes of the api side: send idempotency and uploaded media metadata.

Neither table holds message bodies: ``client_message`` maps a client's retry key to the
Matrix event it produced, ``media`` remembers what an upload was checked to be.
"""

from __future__ import annotations

from mautrix.util.async_db import Connection

from .table import upgrade_table


@upgrade_table.register(description="chat schema additions")
async def upgrade_v3(conn: Connection) -> None:
    # One row per (user, clientMessageId): a retried /send answers with the same event.
    await conn.execute(
        """CREATE TABLE client_message (
            crm_user_id       TEXT NOT NULL,
            client_message_id TEXT NOT NULL,
            conversation_id   TEXT NOT NULL,
            event_id          TEXT NOT NULL,
            created_at        BIGINT NOT NULL,
            PRIMARY KEY (crm_user_id, client_message_id)
        )"""
    )
    # Files uploaded through /api/chat/upload, with the type found by looking at the bytes.
    await conn.execute(
        """CREATE TABLE media (
            mxc           TEXT PRIMARY KEY,
            crm_user_id   TEXT NOT NULL,
            filename      TEXT NOT NULL,
            original_name TEXT NOT NULL,
            mimetype      TEXT NOT NULL,
            size          BIGINT NOT NULL,
            created_at    BIGINT NOT NULL
        )"""
    )
    # Where each file was posted, so a download is allowed only to the uploader and to
    # members of a room it was shared in (whether posted through us or from Element).
    await conn.execute(
        """CREATE TABLE media_room (
            mxc     TEXT NOT NULL,
            room_id TEXT NOT NULL,
            PRIMARY KEY (mxc, room_id)
        )"""
    )
