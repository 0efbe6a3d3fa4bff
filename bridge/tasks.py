"""Small helpers for tasks a request starts beside its own work."""

from __future__ import annotations

import asyncio
from typing import Any


def drop(task: asyncio.Future[Any]) -> None:
    """Cancel a task unless done, and take its outcome, so that none is logged as lost."""
    task.cancel()
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
