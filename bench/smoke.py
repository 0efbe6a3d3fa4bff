"""Check the benchmark plumbing: Synapse on PostgreSQL with the bridge, then stop."""

from __future__ import annotations

import asyncio
import time

from bench.common import bench_stack


async def main() -> None:
    start = time.monotonic()
    async with bench_stack() as stack:
        print("up in", round(time.monotonic() - start, 1), "s:", stack.synapse.url)


if __name__ == "__main__":
    asyncio.run(main())
