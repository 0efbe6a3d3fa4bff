"""A Matrix user's avatar is readable by every CRM user, but naming a file someone posted in
a room as one's avatar does not make that file readable outside the room."""

from __future__ import annotations

import aiohttp
import pytest
from nio import RoomSendResponse

from bridge.chat.service import CHAT
from bridge.context import EVENT_INDEX, MATRIX
from bridge.db.media import Media, MediaStore
from tests.api_support import api_for, crm_user, media_path, png, project_chat
from tests.conftest import unique
from tests.helpers import eventually, matrix_user

pytestmark = pytest.mark.integration


async def test_an_avatar_naming_a_posted_file_does_not_publish_it(stack) -> None:
    app, url = stack.app, stack.bridge_url
    alice, carol = await crm_user(app), await crm_user(app)
    room_a = await project_chat(app, [alice])  # Carol is not in it
    room_b = await project_chat(app, [carol])
    poster = await matrix_user(stack.synapse, unique("poster"))
    mallory = await matrix_user(stack.synapse, unique("mallory"))
    secret = png(5, 5)
    try:
        # An Element user posts a file in room A; Mallory, who saw it there, makes its mxc
        # her avatar, then talks in room B, where Carol reads her messages (and avatar).
        await app[MATRIX].invite(room_a.room_id, poster.user_id)
        await app[MATRIX].invite(room_a.room_id, mallory.user_id)
        await poster.join(room_a.room_id)
        await mallory.join(room_a.room_id)
        uploaded, _ = await poster.upload(
            lambda *_: secret, content_type="image/png", filesize=len(secret)
        )
        mxc = uploaded.content_uri
        posted = await poster.room_send(
            room_a.room_id,
            "m.room.message",
            {"msgtype": "m.image", "body": "secret.png", "url": mxc,
             "info": {"mimetype": "image/png", "size": len(secret)}},
        )  # fmt: skip
        assert isinstance(posted, RoomSendResponse), posted
        await eventually(lambda: app[EVENT_INDEX].get(posted.event_id))
        await mallory.set_avatar(mxc)
        await app[MATRIX].invite(room_b.room_id, mallory.user_id)
        await mallory.join(room_b.room_id)
        said = await mallory.room_send(
            room_b.room_id, "m.room.message", {"msgtype": "m.text", "body": "look at me"}
        )
        assert isinstance(said, RoomSendResponse), said
        await eventually(lambda: app[EVENT_INDEX].get(said.event_id))
        path = "/api/chat/media/" + mxc.removeprefix("mxc://")
        async with (
            api_for(app, url, alice) as a,
            api_for(app, url, carol) as c,
            aiohttp.ClientSession() as session,
        ):
            page = (await c.get(f"/api/chat/messages/{room_b.conversation_id}"))[1]
            sender = {m["content"]: m for m in page["messages"]}["look at me"]["sender"]
            assert sender["_id"] == mallory.user_id
            # Carol is offered the avatar URL (the profile was read), but may not fetch it:
            # the file was posted in a room she is not in.
            assert media_path(sender["avatar"]) == path
            async with session.get(sender["avatar"]) as resp:
                assert resp.status == 404
            async with session.get(url + path, headers=c.headers()) as resp:
                assert resp.status == 404
            # Read again after the profile was read: still no grant for anyone outside A.
            await app[CHAT].profile(mallory.user_id)
            async with session.get(url + path, headers=c.headers()) as resp:
                assert resp.status == 404
            # Alice, in room A, reads it as before.
            async with session.get(url + path, headers=a.headers()) as resp:
                assert resp.status == 200 and await resp.read() == secret
    finally:
        await poster.close()
        await mallory.close()


async def test_avatar_grants_follow_the_profile_on_both_engines(db) -> None:
    """The store's rules, on SQLite and PostgreSQL: a grant per (file, owner), none for an
    upload or a posted file, dropped when the profile shows another avatar or the file is
    posted in a room."""
    media = MediaStore(db)
    own, posted, uploaded = "mxc://hs/own", "mxc://hs/posted", "mxc://hs/uploaded"
    await media.posted_in(posted, "!a:hs")
    await media.add(Media(uploaded, "crm-1", "u.png", "u.png", "image/png", 3))
    await media.avatar_is("@m:hs", posted)
    await media.avatar_is("@n:hs", uploaded)
    assert await media.avatar_owners(posted) == [] and await media.avatar_owners(uploaded) == []
    await media.avatar_is("@m:hs", own)
    await media.avatar_is("@m:hs", own)  # read again: one grant
    assert await media.avatar_owners(own) == ["@m:hs"]
    await media.avatar_is("@m:hs", None)  # the avatar was removed
    assert await media.avatar_owners(own) == []
    await media.avatar_is("@m:hs", own)
    await media.posted_in(own, "!b:hs")  # then posted in a room: readable by its members only
    assert await media.avatar_owners(own) == []
