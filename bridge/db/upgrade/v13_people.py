"""People: the CRM's own name parts, job title, picture and company for each user; and
which DMs have had their power levels checked."""

from __future__ import annotations

from mautrix.util.async_db import Connection

from .table import upgrade_table


@upgrade_table.register(description="people: name parts, position, picture, company; DM levels")
async def upgrade_v13(conn: Connection) -> None:
    # The CRM messenger names people by firstName + lastName and pictures them by
    # profileImage; the employee picker filters on position and a company's users.
    for column in ("first_name", "last_name", "position", "profile_image", "company_id"):
        await conn.execute(f"ALTER TABLE crm_user ADD COLUMN {column} TEXT")
    # GET /api/chat/employees: (a company's) users in name order, read until the limit.
    await conn.execute(
        "CREATE INDEX crm_user_company_name ON crm_user (company_id, name, crm_user_id)"
    )
    await conn.execute("CREATE INDEX crm_user_name ON crm_user (name, crm_user_id)")
    # DMs whose power levels follow the current rule (api/dm_levels.py): 0 = not checked.
    await conn.execute(
        "ALTER TABLE conversation ADD COLUMN levels_version INTEGER NOT NULL DEFAULT 0"
    )
