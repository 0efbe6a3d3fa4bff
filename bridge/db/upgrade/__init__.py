"""Numbered schema migrations, applied in order by mautrix's UpgradeTable."""

from mautrix.util.async_db import UpgradeTable

upgrade_table = UpgradeTable(version_table_name="bridge_version", database_name="bridge")

from . import v01_initial  # noqa: E402,F401
