"""Numbered schema migrations, applied in order by mautrix's UpgradeTable."""

from mautrix.util.async_db import UpgradeTable

upgrade_table = UpgradeTable(version_table_name="bridge_version", database_name="bridge")

# Each module registers itself on import; the import order is the version order.
from . import (  # noqa: E402
    v01_initial,
    v02_directory,
    v03_chat,
    v04_realtime,
    v05_txn_digest,
    v06_emitted,
    v07_scale,
    v08_relations,
    v09_cleared,
)

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
]
