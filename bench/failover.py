"""Failover of the receiving role: the receiver is killed (SIGKILL) during a burst.

Starts what ``tests/test_receiver_failover.py`` starts (``tests/receiver_support.py``): a
Synapse of its own, a private PostgreSQL cluster, two processes configured to receive
transactions behind deploy/nginx.conf's homeserver door (nginx where installed, else a
router doing the same: a 503 goes to the next process), and a facade process with a
python-socketio client. A matrix-nio user sends ``--messages``; a quarter in, the receiver
is killed. Per run:

* ``lock_taken_s``: from the kill until the standby reports ``role: receiver``;
* ``first_txn_on_standby_s``: until the first transaction the standby acknowledged;
* ``lost``: messages the socket never got, live or by catch-up from its newest cursor
  (must be 0), and ``duplicated``.

There is no Synapse-direct baseline to set beside it: without a standby the bridge is down
until someone restarts it, and Synapse then waits out its own backoff (2, 4, ... 512 s).

    .venv/bin/python -m bench.failover --messages 1000 --runs 2 --json failover.json
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Deadline, base_parser, report, summary
from tests.receiver_support import NginxReceivers, failover_during_burst, receiver_pair


async def main(messages: int, runs: int, time_limit: float, json_path: str | None) -> None:
    deadline = Deadline(time_limit)
    # deploy/nginx.conf's door where nginx is installed, the router doing the same elsewhere.
    proxy = "nginx" if NginxReceivers.available else "router"
    results: dict[str, Any] = {"messages": messages, "proxy": proxy, "runs": []}
    for _ in range(runs):
        if deadline.passed() and results["runs"]:
            break
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
            async with receiver_pair(Path(tmp), proxy) as pair:
                figures = await failover_during_burst(pair, messages)
        results["runs"].append(
            {
                "lock_taken_s": figures["lock_taken_s"],
                "first_txn_on_standby_s": figures["first_txn_on_standby_s"],
                "lost": len(figures["missing"]),
                "why_missing": figures.get("why_missing"),
                "duplicated": len(figures["duplicated"]) + len(figures["live_duplicated"]),
                "live": figures["live"],
                "caught_up": figures["caught_up"],
                "seconds": round(time.monotonic() - started, 1),
            }
        )
    landed = [r["first_txn_on_standby_s"] * 1000 for r in results["runs"]]
    results["first_txn_on_standby"] = summary(landed)
    results["lost"] = sum(r["lost"] for r in results["runs"])
    results["duplicated"] = sum(r["duplicated"] for r in results["runs"])
    report("receiver failover", results, json_path)


def entry() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.runs, args.time_limit, args.json))


if __name__ == "__main__":
    entry()
