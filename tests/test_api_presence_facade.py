"""A facade that gets no transactions still shows a connected user online over REST."""

from __future__ import annotations

import pytest

from tests.api_support import api_for, crm_user, second_facade, token
from tests.helpers import eventually
from tests.realtime_support import Recorder

pytestmark = pytest.mark.integration


async def test_users_route_of_a_facade_sees_a_socket_opened_after_its_cache(stack) -> None:
    viewer = await crm_user(stack.app, "Viewer")
    talker = await crm_user(stack.app, "Talker")
    async with second_facade(stack.config) as facade:
        base = facade.config["appservice.address"]
        async with api_for(stack.app, base, viewer) as api:

            async def talker_online() -> bool | None:
                status, users, _ = await api.get("/api/users")
                assert status == 200
                return next(u["isOnline"] for u in users if u["_id"] == talker.crm_user_id)

            # The facade asks Matrix once and caches the answer: offline.
            assert await talker_online() is False
            socket = await Recorder("talker").connect(base, token(stack.app, talker))
            try:
                # No m.presence reaches this process; the socket registry says online.
                assert await eventually(talker_online, timeout=5)
                async with api_for(stack.app, base, talker) as own:
                    _, me, _ = await own.get("/api/auth/me")
                    assert me["isOnline"] is True
            finally:
                await socket.close()
