"""The bridge's migration table; each numbered module registers itself on it."""

from mautrix.util.async_db import UpgradeTable

upgrade_table = UpgradeTable(version_table_name="bridge_version", database_name="bridge")
