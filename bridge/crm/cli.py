"""``python -m bridge sync snapshot.json [--dry-run] [--force]`` for operators.

The CLI asks the running bridge (its admin API on the configured host and port) rather
than opening the database and homeserver itself: the bridge is then the only writer, its
engine lock serialises this sync with the CRM's own calls and drift repairs, and the
operator needs nothing but the config file. A long sync runs as a job whose progress is
drawn on stderr; a summary table follows on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp

from ..config import Config

API = "/api/admin/v1"


def bridge_url(config: Config) -> str:
    host = str(config["appservice.hostname"])
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{int(config['appservice.port'])}"


def draw_bar(done: int, total: int, width: int = 30) -> None:
    total = max(total, 1)
    filled = int(width * min(done, total) / total)
    bar = "#" * filled + "-" * (width - filled)
    sys.stderr.write(f"\r[{bar}] {done}/{total} writes")
    sys.stderr.flush()


def summary_table(result: dict[str, Any], dry_run: bool) -> str:
    summary = result["plan"] if dry_run else result["applied"]
    rows: list[tuple[str, int]] = []
    for group in ("users", "projects"):
        for action, items in summary[group].items():
            rows.append((f"{group} {action}", len(items)))
    for action in ("invite", "join", "kick", "leave"):
        rows.append((f"members {action}", len(summary[action])))
    rows.append(("power level changes", len(summary["powerLevels"])))
    writes = result.get("writes", {})
    rows.append(("homeserver writes planned", int(writes.get("planned", 0))))
    if not dry_run:
        rows.append(("homeserver writes made", int(writes.get("made", 0))))
        rows.append(("errors", len(result.get("errors", []))))
    for what, count in (result.get("withheld") or {}).items():
        rows.append((f"withheld {what} (use --force)", count))
    width = max(len(label) for label, _ in rows)
    title = "plan (dry run, nothing changed)" if dry_run else "applied"
    lines = [title, "-" * (width + 9)]
    lines += [f"{label:<{width}}  {count:>7}" for label, count in rows]
    return "\n".join(lines)


async def sync_command(config: Config, args: argparse.Namespace) -> int:
    try:
        snapshot = json.loads(await asyncio.to_thread(Path(args.snapshot).read_text, "utf-8"))
    except (OSError, ValueError) as e:
        print(f"Cannot read the snapshot {args.snapshot}: {e}", file=sys.stderr)
        return 2
    base = bridge_url(config) + API
    headers = {"Authorization": f"Bearer {config['admin_api.token']}"}
    params = {"dryRun": "true" if args.dry_run else "false", "force": str(args.force).lower()}
    if not args.dry_run:
        params["wait"] = "false"
    try:
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.post(f"{base}/sync", json=snapshot, params=params) as resp:
                body = await resp.json(content_type=None)
                if resp.status >= 400:
                    print(f"Sync refused: {body.get('message')}", file=sys.stderr)
                    for problem in body.get("problems", []):
                        print(f"  - {problem}", file=sys.stderr)
                    return 2
            if args.dry_run:
                print(summary_table(body, True))
                return 0
            result = await _follow(session, f"{base}/sync/jobs/{body['job']}")
    except aiohttp.ClientError as e:
        print(f"The bridge is not reachable at {bridge_url(config)}: {e}", file=sys.stderr)
        return 1
    if result is None:
        return 1
    print(summary_table(result, False))
    return 1 if result.get("errors") else 0


async def _follow(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    while True:
        async with session.get(url) as resp:
            job = await resp.json(content_type=None)
        if sys.stderr.isatty() or job["state"] != "running":
            draw_bar(job.get("done", 0), job.get("total", 0))
        if job["state"] == "done":
            sys.stderr.write("\n")
            return job["result"]
        if job["state"] == "failed":
            sys.stderr.write(f"\nSync failed: {job.get('message')}\n")
            return None
        await asyncio.sleep(0.3)
