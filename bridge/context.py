"""Shared state of the aiohttp application, by typed key (no module-level globals).

Each side of the bridge defines keys for its own services next to them; the keys here are
the ones every side uses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from mautrix.util.async_db import Database

from .config import Config
from .db.conversation import ConversationStore
from .db.crm_user import CrmUserStore
from .db.project import ProjectStore
from .db.receipt import ReceiptStore
from .db.room_event import RoomEventIndex
from .db.room_member import RoomMemberStore
from .db.txn import TransactionLog
from .federation import FederationPolicy
from .ids import IdMapper
from .matrix.client import MatrixClient
from .matrix.dispatcher import EventDispatcher
from .matrix.homeserver import Homeserver
from .matrix.receiver import Receiver
from .redis_state import RedisState
from .revocation import Revocations

CONFIG = web.AppKey("config", Config)
DATABASE = web.AppKey("database", Database)
HOMESERVER = web.AppKey("homeserver", Homeserver)
MATRIX = web.AppKey("matrix", MatrixClient)
DISPATCHER = web.AppKey("dispatcher", EventDispatcher)
TXN_LOG = web.AppKey("txn_log", TransactionLog)
EVENT_INDEX = web.AppKey("event_index", RoomEventIndex)
USERS = web.AppKey("users", CrmUserStore)
PROJECTS = web.AppKey("projects", ProjectStore)
CONVERSATIONS = web.AppKey("conversations", ConversationStore)
ROOM_MEMBERS = web.AppKey("room_members", RoomMemberStore)
RECEIPTS = web.AppKey("receipts", ReceiptStore)
IDS = web.AppKey("ids", IdMapper)
# Who may take part from other homeservers (federation.*).
FEDERATION = web.AppKey("federation", FederationPolicy)
# Set once startup checks passed and the database is open: readiness.
READY = web.AppKey("ready", dict)
# This process's role for transactions (facade, standby, receiver) and the lock behind it.
RECEIVER = web.AppKey("receiver", Receiver)
# Set when ``redis.url`` is: whether this process reaches Redis now (bridge/redis_state.py).
REDIS_STATE = web.AppKey("redis_state", RedisState)

# Called with (conversation, message) right after the facade sent a message, before the
# homeserver's transaction brings it back, so real-time clients see it at once.
MessageListener = Callable[..., Awaitable[None]]
LOCAL_ECHO = web.AppKey("local_echo", list)

# Told by the directory side the moment it takes access away (a removal, a deactivation).
REVOCATIONS = web.AppKey("revocations", Revocations)

# "Does the CRM know this mxid / alias?" Filled in by the directory side.
ExistenceQuery = Callable[[str], Awaitable[bool]]
USER_QUERY = web.AppKey("user_query", ExistenceQuery)
ALIAS_QUERY = web.AppKey("alias_query", ExistenceQuery)
