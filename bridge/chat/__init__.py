"""The read model both the REST facade (``api/``) and the real-time side (``realtime/``) use.

``service.py`` answers from the index (``app[CHAT]``); ``indexer.py`` is the one writer of
the index (``room_event``, receipts, conversation activity and previews), fed by appservice
transactions and by the facade's own sends through the same idempotent function;
``serialize.py`` and ``enrich.py`` make the message and conversation objects, whose media
paths ``media_urls.py`` signs for each reader at the edge; the SQL is in ``bridge/db/``.
"""

from __future__ import annotations

from aiohttp import web

from . import indexer, invalidation
from .service import CHAT, ChatService


def setup(app: web.Application) -> None:
    app[CHAT] = ChatService(app)
    indexer.setup(app)
    invalidation.setup(app)
