"""Sync jobs started with ``?wait=false``, readable from every process (db/sync_job.py)."""

from __future__ import annotations

from mautrix.util.async_db import Connection

from .table import upgrade_table


@upgrade_table.register(description="crm: sync job status shared by every process")
async def upgrade_v12(conn: Connection) -> None:
    # result: the sync's summary as JSON once done; message: why it failed. updated_at is
    # the runner's heartbeat, so a job whose process died reads as failed, not running.
    await conn.execute(
        """CREATE TABLE sync_job (
            job_id     TEXT PRIMARY KEY,
            state      TEXT NOT NULL,
            done       INTEGER NOT NULL DEFAULT 0,
            total      INTEGER NOT NULL DEFAULT 0,
            result     TEXT,
            message    TEXT,
            started_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        )"""
    )
