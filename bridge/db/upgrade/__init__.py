"""Numbered schema migrations, applied in order by mautrix's UpgradeTable."""

# Each module registers itself on import; the import order is the version order.
from . import (
    v01_initial,
    v02_directory,
    v03_chat,
    v04_realtime,
    v05_txn_digest,
    v06_emitted,
    v07_scale,
    v08_relations,
    v09_cleared,
    v10_timeline,
    v11_published_mark,
    v12_sync_job,
    v13_people,
    v14_guests,
    v15_avatar_grants,
    v16_relation_announced,
    v17_txn_recent,
)
from .table import upgrade_table

__all__ = [
    "upgrade_table",
    "v01_initial",
    "v02_directory",
    "v03_chat",
    "v04_realtime",
    "v05_txn_digest",
    "v06_emitted",
    "v07_scale",
    "v08_relations",
    "v09_cleared",
    "v10_timeline",
    "v11_published_mark",
    "v12_sync_job",
    "v13_people",
    "v14_guests",
    "v15_avatar_grants",
    "v16_relation_announced",
    "v17_txn_recent",
]
