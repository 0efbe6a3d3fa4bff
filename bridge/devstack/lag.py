"""A TCP relay that holds back what a server sends by a fixed delay: replication lag on
demand, for tests of Synapse with workers (bridge/devstack/workers.py, ``reader_lag_ms``).

Put between a worker and Redis, it delays every replication command the worker receives,
so the worker answers reads from a stream position that far behind, as a loaded deployment
does. Bytes keep their order; what the worker sends goes through at once.

    python -m bridge.devstack.lag <listen port> <upstream host> <upstream port> <delay ms>
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(deliver())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((time.monotonic() + delay, data))
    finally:
        queue.put_nowait((0.0, b""))
        with contextlib.suppress(Exception):
            await sender
        writer.close()


async def serve(port: int, host: str, upstream_port: int, delay_ms: int) -> None:
    delay = delay_ms / 1000

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(host, upstream_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            _pipe(client_r, server_w, 0.0), _pipe(server_r, client_w, delay),
            return_exceptions=True,
        )  # fmt: skip

    server = await asyncio.start_server(relay, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    listen, host, upstream, delay_ms = sys.argv[1:5]
    asyncio.run(serve(int(listen), host, int(upstream), int(delay_ms)))
