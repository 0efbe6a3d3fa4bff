"""The initial schema: intake log, event index, CRM directory and conversations.

The bridge never stores message bodies: Matrix holds the history. It keeps what it needs to
answer quickly (who is where, the order and senders of events, and receipts).
"""

from __future__ import annotations

from mautrix.util.async_db import Connection, Scheme

from .table import upgrade_table


@upgrade_table.register(description="Initial schema")
async def upgrade_v1(conn: Connection, scheme: Scheme) -> None:
    # Appservice transactions already handled, so a replay is acknowledged, not reprocessed.
    await conn.execute(
        """CREATE TABLE as_txn (
            txn_id       TEXT PRIMARY KEY,
            event_count  INTEGER NOT NULL,
            processed_at BIGINT NOT NULL
        )"""
    )
    # Timeline events seen in our rooms. seq grows with arrival and is the paging cursor.
    seq_column = (
        "seq BIGSERIAL PRIMARY KEY"
        if scheme in (Scheme.POSTGRES, Scheme.COCKROACH)
        else "seq INTEGER PRIMARY KEY AUTOINCREMENT"
    )
    await conn.execute(
        f"""CREATE TABLE room_event (
            {seq_column},
            event_id   TEXT NOT NULL UNIQUE,
            room_id    TEXT NOT NULL,
            sender     TEXT NOT NULL,
            event_type TEXT NOT NULL,
            msgtype    TEXT,
            origin_ts  BIGINT NOT NULL
        )"""
    )
    await conn.execute("CREATE INDEX room_event_room_seq ON room_event (room_id, seq)")
    await conn.execute("CREATE INDEX room_event_room_ts ON room_event (room_id, origin_ts)")
    # CRM users and the state of their puppets as last applied to Matrix.
    await conn.execute(
        """CREATE TABLE crm_user (
            crm_user_id         TEXT PRIMARY KEY,
            mxid                TEXT NOT NULL UNIQUE,
            name                TEXT NOT NULL,
            email               TEXT NOT NULL,
            avatar              TEXT,
            role                TEXT NOT NULL,
            active              BOOLEAN NOT NULL DEFAULT true,
            matrix_id           TEXT,
            registered          BOOLEAN NOT NULL DEFAULT false,
            applied_displayname TEXT,
            applied_avatar      TEXT,
            avatar_mxc          TEXT,
            created_at          BIGINT NOT NULL,
            updated_at          BIGINT NOT NULL
        )"""
    )
    await conn.execute("CREATE INDEX crm_user_matrix_id ON crm_user (matrix_id)")
    # CRM projects and their rooms; `applied` is a JSON digest of the room state we set.
    await conn.execute(
        """CREATE TABLE project (
            project_id  TEXT PRIMARY KEY,
            name        TEXT NOT NULL,
            description TEXT,
            emoji       TEXT,
            color       TEXT,
            created_by  TEXT,
            archived    BOOLEAN NOT NULL DEFAULT false,
            room_id     TEXT UNIQUE,
            applied     TEXT,
            created_at  BIGINT NOT NULL,
            updated_at  BIGINT NOT NULL
        )"""
    )
    await conn.execute(
        """CREATE TABLE project_member (
            project_id  TEXT NOT NULL REFERENCES project (project_id) ON DELETE CASCADE,
            crm_user_id TEXT NOT NULL,
            PRIMARY KEY (project_id, crm_user_id)
        )"""
    )
    await conn.execute("CREATE INDEX project_member_user ON project_member (crm_user_id)")
    # Matrix membership in our rooms as the bridge last saw or applied it.
    await conn.execute(
        """CREATE TABLE room_member (
            room_id    TEXT NOT NULL,
            mxid       TEXT NOT NULL,
            membership TEXT NOT NULL,
            PRIMARY KEY (room_id, mxid)
        )"""
    )
    await conn.execute("CREATE INDEX room_member_mxid ON room_member (mxid)")
    # Conversations as the facade shows them: one per project room or DM room.
    await conn.execute(
        """CREATE TABLE conversation (
            conversation_id TEXT PRIMARY KEY,
            room_id         TEXT NOT NULL UNIQUE,
            kind            TEXT NOT NULL,
            project_id      TEXT UNIQUE,
            direct_key      TEXT UNIQUE,
            created_at      BIGINT NOT NULL,
            last_event_id   TEXT,
            last_activity   BIGINT NOT NULL
        )"""
    )
    # The newest read receipt per user and room (a receipt at E reads everything up to E).
    await conn.execute(
        """CREATE TABLE receipt (
            room_id  TEXT NOT NULL,
            mxid     TEXT NOT NULL,
            event_id TEXT NOT NULL,
            seq      BIGINT NOT NULL,
            ts       BIGINT NOT NULL,
            PRIMARY KEY (room_id, mxid)
        )"""
    )
