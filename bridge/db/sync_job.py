"""Sync jobs (table ``sync_job``): the status of a ``POST /sync?wait=false``.

The process that runs a job writes its progress here, so a poll answered by any process of
the deployment sees it. The runner refreshes ``updated_at`` while the job runs; a running
job whose heartbeat stopped belonged to a process that died. Finished jobs are pruned to
the newest few, and any job is dropped a day after its last write.
"""

from __future__ import annotations

from dataclasses import dataclass

from mautrix.util.async_db import Database

COLUMNS = "job_id, state, done, total, result, message, started_at, updated_at"


@dataclass
class SyncJob:
    job_id: str
    state: str
    done: int
    total: int
    result: str | None
    message: str | None
    started_at: int
    updated_at: int


class SyncJobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def start(self, job_id: str, now: int) -> None:
        await self.db.execute(
            f"INSERT INTO sync_job ({COLUMNS}) VALUES ($1, 'running', 0, 0, NULL, NULL, $2, $2)",
            job_id, now,
        )  # fmt: skip

    async def progress(self, job_id: str, done: int, total: int, now: int) -> None:
        await self.db.execute(
            "UPDATE sync_job SET done=$2, total=$3, updated_at=$4 "
            "WHERE job_id=$1 AND state='running'",
            job_id, done, total, now,
        )  # fmt: skip

    async def finish(
        self, job_id: str, state: str, result: str | None, message: str | None, now: int
    ) -> None:
        await self.db.execute(
            "UPDATE sync_job SET state=$2, result=$3, message=$4, updated_at=$5 WHERE job_id=$1",
            job_id, state, result, message, now,
        )  # fmt: skip

    async def get(self, job_id: str) -> SyncJob | None:
        row = await self.db.fetchrow(f"SELECT {COLUMNS} FROM sync_job WHERE job_id=$1", job_id)
        return SyncJob(**row) if row else None

    async def prune(self, keep: int, stale_before: int) -> None:
        """Finished jobs beyond the ``keep`` newest go, and so does any job whose last
        write is older than ``stale_before`` (a runner that died long ago)."""
        await self.db.execute(
            "DELETE FROM sync_job WHERE updated_at < $2 OR (state <> 'running' AND job_id "
            "NOT IN (SELECT job_id FROM sync_job ORDER BY started_at DESC LIMIT $1))",
            keep, stale_before,
        )  # fmt: skip
