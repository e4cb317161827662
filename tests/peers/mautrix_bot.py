"""A bot built on mautrix-python's AppService, as bridges are: it joins rooms it is invited to,
answers "ping" with "pong", and on "echo <text>" says <text> as one of its namespace users.

    mautrix_bot.py <homeserver URL> <server name> <port> <as_token> <hs_token>

Prints "ready" once it listens.
"""

import asyncio
import sys

from mautrix.appservice import AppService
from mautrix.types import EventType, Membership, MessageType, TextMessageEventContent


async def main() -> None:
    hs_url, domain, port, as_token, hs_token = sys.argv[1:6]
    appservice = AppService(
        server=hs_url,
        domain=domain,
        as_token=as_token,
        hs_token=hs_token,
        bot_localpart="_mbot",
        id="mautrix-bot",
    )
    bot = f"@_mbot:{domain}"

    async def on_event(event) -> None:
        intent = appservice.intent
        if event.type == EventType.ROOM_MEMBER:
            if (
                event.state_key == bot
                and event.content.membership == Membership.INVITE
            ):
                await intent.join_room(event.room_id)
            return
        if event.type != EventType.ROOM_MESSAGE or event.sender.startswith("@_mbot"):
            return
        body = event.content.body or ""
        if body == "ping":
            await intent.send_text(event.room_id, "pong")
        elif body.startswith("echo "):
            # A namespace user, registered (and joined) on demand by mautrix's intent.
            puppet = appservice.intent.user(f"@_mbot_echo:{domain}")
            await puppet.ensure_joined(event.room_id)
            await puppet.send_message(
                event.room_id,
                TextMessageEventContent(msgtype=MessageType.TEXT, body=body[5:]),
            )

    appservice.matrix_event_handler(on_event)
    await appservice.start(host="127.0.0.1", port=int(port))
    await appservice.intent.ensure_registered()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
