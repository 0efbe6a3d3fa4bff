"""Every benchmark in one go, each beside its Synapse-direct baseline, and the report.

    .venv/bin/python -m bench.run [--quick] [--profile] [--only facade,realtime]

(``make bench``; ``BENCH_QUICK=1`` and ``BENCH_PROFILE=1`` set ``--quick`` and ``--profile``.)
Runs each benchmark module as a child process with its own time bound, then writes
``docs/benchmarks.md`` (targets met or missed, size → time tables, the machine, the commit)
with its plots and raw results under ``docs/benchmarks/``. The hand-written analysis lives in
``docs/benchmarks-notes.md`` and is copied into the report on every run.

``--profile`` runs the bridge under cProfile during the send, transaction and conversation
list phases and adds the top functions to the report; cProfile slows Python code several
times over, so the figures of a profiled run are not comparable to the targets.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import PROFILE_DIR_ENV

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REPORT = DOCS / "benchmarks.md"
ASSETS = DOCS / "benchmarks"
NOTES = DOCS / "benchmarks-notes.md"


@dataclass(frozen=True)
class Step:
    name: str
    module: str
    full: list[str]
    quick: list[str]
    budget_s: int  # the benchmark's own --time-limit (its setup comes on top)


STEPS = [
    # The conversation list at 200 is measured by `conversations` (on a facade process, as
    # deployed); here only a small in-process listing, to keep the setup short.
    Step("facade", "bench.facade",
         ["--sequential", "60", "--rounds", "4", "--list-conversations", "20",
          "--list-requests", "50", "--search-requests", "30"],
         ["--sequential", "20", "--rounds", "2", "--per-sender", "3", "--list-requests", "20",
          "--list-conversations", "10", "--search-requests", "10"], 240),
    Step("relations", "bench.relations", ["--requests", "60"], ["--requests", "15"], 120),
    Step("media", "bench.media", ["--requests", "60"], ["--requests", "15"], 90),
    Step("realtime", "bench.realtime",
         ["--samples", "40", "--sockets", "500,1000,2000", "--users", "100",
          "--fanout-messages", "10"],
         ["--samples", "10", "--sockets", "100,200", "--users", "20", "--fanout-messages", "4",
          "--settle", "2"], 240),
    # Two homeservers (monolithic, then with workers), each with its own Synapse, bridge and
    # two facade processes.
    Step("scaleout", "bench.scaleout",
         ["--per-sender", "6", "--rounds", "3", "--samples", "30"],
         ["--per-sender", "2", "--rounds", "1", "--samples", "8", "--warmup", "2"], 360),
    # The receiver killed during a burst from a matrix-nio user, a standby taking over.
    Step("failover", "bench.failover", ["--messages", "1000", "--runs", "2"],
         ["--messages", "200", "--runs", "1"], 420),
    Step("conversations", "bench.conversations",
         ["--sizes", "200,500,1000", "--requests", "40"],
         ["--sizes", "50,200", "--requests", "15"], 420),
    Step("people", "bench.people",
         ["--users", "10000", "--conversations", "200", "--requests", "40"],
         ["--users", "2000", "--conversations", "20", "--requests", "10"], 240),
    # Last: it gets what is left of --budget, and goes up the sizes as far as that allows
    # (each size predicted from the one before; see bench/directory.py).
    Step("directory", "bench.directory",
         ["--sizes", "200x20,500x50,1000x100,3000x300,10000x1000", "--members", "10"],
         ["--sizes", "100x10,200x20", "--members", "10"], 0),
]  # fmt: skip

# The 10,000-user directory point: 30-40 minutes of Synapse work, so its own command
# (`make bench-scale`, ``--scale``); every report shows the latest one beside the run's curve.
SCALE = ASSETS / "scale.json"
SCALE_STEP = Step(
    "directory", "bench.directory",
    ["--sizes", "10000x1000", "--members", "10", "--direct-max-users", "0"], [], 0,
)  # fmt: skip
SCALE_BUDGET_S = 5400


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cores": os.cpu_count()}
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            info["cpu"] = line.split(":", 1)[1].strip()
            break
    return info


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def run_step(
    step: Step, quick: bool, work: Path, profile_dir: Path | None, budget_s: int
) -> dict[str, Any]:
    out = work / f"{step.name}.json"
    log = work / f"{step.name}.log"
    argv = [sys.executable, "-m", step.module, *(step.quick if quick else step.full),
            "--time-limit", str(budget_s), "--json", str(out)]  # fmt: skip
    env = dict(os.environ)
    env.pop(PROFILE_DIR_ENV, None)
    if profile_dir:
        env[PROFILE_DIR_ENV] = str(profile_dir)
    print(f"[bench] {step.name}: {' '.join(argv[1:])}", flush=True)
    start = time.monotonic()
    with open(log, "wb") as handle:
        try:
            proc = subprocess.run(
                argv, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                timeout=budget_s + 180,
            )  # fmt: skip
            rc: int | str = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    seconds = round(time.monotonic() - start, 1)
    entry: dict[str, Any] = {"argv": argv[1:], "seconds": seconds, "rc": rc}
    if out.exists():  # a benchmark that fails late may have written what it measured
        entry["results"] = json.loads(out.read_text())
    if rc != 0:
        entry["log_tail"] = log.read_text(errors="replace")[-3000:]
    print(f"[bench] {step.name}: rc={rc} in {seconds} s", flush=True)
    return entry


def profile_tables(profile_dir: Path) -> dict[str, dict[str, list[list[Any]]]]:
    """Per phase: the top functions by own time, and the bridge's by cumulative time."""
    tables: dict[str, dict[str, list[list[Any]]]] = {}
    for path in sorted(profile_dir.glob("*.prof")):
        try:
            stats = pstats.Stats(str(path), stream=io.StringIO())
        except (OSError, TypeError, EOFError) as exc:
            print(f"[bench] unreadable profile {path.name}: {exc}", flush=True)
            continue
        rows = []
        for (file, line, func), (_cc, calls, own, cum, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            where = _short(file)
            rows.append([f"{where}:{line}({func})", calls, round(own, 3), round(cum, 3)])
        total = sum(r[2] for r in rows) or 1.0
        own_top = sorted(rows, key=lambda r: -r[2])[:15]
        bridge_top = sorted((r for r in rows if r[0].startswith("bridge/")), key=lambda r: -r[3])
        tables[path.stem] = {
            "total_s": [[round(total, 2)]],
            "own": [[*r, round(100 * r[2] / total, 1)] for r in own_top],
            "bridge_cumulative": [[*r, round(100 * r[3] / total, 1)] for r in bridge_top[:20]],
        }
    return tables


def _short(file: str) -> str:
    for marker in ("/bridge/", "/site-packages/", "/lib/python3"):
        if marker in file:
            tail = file.split(marker, 1)[1]
            return ("bridge/" + tail) if marker == "/bridge/" else tail
    return file


# ---- the report ----------------------------------------------------------------------------


def _get(data: Any, *path: Any) -> Any:
    for key in path:
        if data is None:
            return None
        if isinstance(key, int):
            data = data[key] if isinstance(data, list) and -len(data) <= key < len(data) else None
        else:
            data = data.get(key) if isinstance(data, dict) else None
    return data


def _at(curve: list[dict[str, Any]] | None, key: str, value: int) -> dict[str, Any] | None:
    return next((p for p in curve or [] if p.get(key) == value), None)


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        value = f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 10 else f"{value:.1f}"
    return f"{value}{unit}"


def scale_point() -> dict[str, Any] | None:
    """The latest ``--scale`` run's 10,000-user point, with when and where it was taken."""
    if not SCALE.exists():
        return None
    saved = json.loads(SCALE.read_text())
    curve = _get(saved, "results", "curve") or []
    return {**curve[-1], "run": saved} if curve else None


def targets(steps: dict[str, dict[str, Any]]) -> list[list[str]]:
    """[target, measured, status] rows: every target of issue 11."""
    r = {name: entry.get("results") for name, entry in steps.items()}
    rows: list[list[str]] = []

    def row(label: str, value: Any, ok: bool | None, detail: str = "", size_note: str = ""):
        status = "—" if ok is None else ("met" if ok else "**missed**")
        if value is None:
            detail = ""
        if size_note:  # not the target's size: shown, not judged
            status = f"not judged ({size_note})"
        rows.append([label, f"{_fmt(value)}{detail}", status])

    send = _get(r.get("facade"), "send_latency")
    ratio = _get(send, "p50_ratio")
    row(
        "`POST /send` p50 ≤ 1.05× direct",
        ratio,
        None if ratio is None else ratio <= 1.05,
        f"× ({_get(send, 'facade', 'p50_ms')} vs {_get(send, 'direct', 'p50_ms')} ms)",
    )
    tput = _get(r.get("facade"), "throughput", "ratio")
    row("throughput, 32 senders ≥ 0.95× direct", tput, None if tput is None else tput >= 0.95, "×")
    lat = _get(r.get("realtime"), "latency")
    ratio = _get(lat, "p50_ratio")
    row(
        "send → `new_message` p50 ≤ 0.8× send → appservice transaction",
        ratio,
        None if ratio is None else ratio <= 0.8,
        f"× ({_get(lat, 'bridge_send_to_new_message', 'p50_ms')} vs "
        f"{_get(lat, 'synapse_send_to_transaction', 'p50_ms')} ms)",
    )
    directory = r.get("directory") or {}
    curve = directory.get("curve") or []
    overall = directory.get("initial_ratio_overall")
    row(
        "initial directory sync ≤ 1.0× direct (all sizes together)",
        overall,
        None if overall is None else overall <= 1.0,
        "×",
    )
    big = curve[-1] if curve else None
    scale = scale_point()
    at_size = big and (big["users"], big["projects"]) == (10_000, 1_000)
    if not at_size and scale is not None:
        big = scale  # the separate `make bench-scale` run
    from_scale = big is scale and scale is not None
    scale_label = (
        f" (`make bench-scale`, {scale['run']['date']}, commit {scale['run']['commit']})"
        if from_scale and scale is not None
        else ""
    )
    note = ""
    if big and (big["users"], big["projects"]) != (10_000, 1_000):
        note = f"measured at {big['users']} users / {big['projects']} projects"
    resync = _get(big, "bridge_unchanged_resync")
    ok = None if resync is None else resync["seconds"] < 5 and resync["writes"] == 0
    row(
        "unchanged re-sync, 10k users / 1k projects < 5 s, 0 writes",
        _get(resync, "seconds"),
        ok,
        f" s, {_get(resync, 'writes')} writes{scale_label}",
        note,
    )
    rss = _get(big, "fresh_process", "rss_mb")
    row(
        "bridge RSS ≤ 150 MB, 10k users / 1k rooms, no sockets",
        rss,
        None if rss is None else rss <= 150,
        f" MB{scale_label}",
        note,
    )
    conv = _get(r.get("conversations"), "curve")
    for size, limit in ((200, 15), (1000, 50)):
        point = _at(conv, "size", size)
        p95 = _get(point, "next_listings", "p95_ms")
        row(
            f"`GET /conversations` p95 ≤ {limit} ms at {size}",
            p95,
            None if p95 is None else p95 <= limit,
            " ms",
            "" if point or not conv else "size not measured (quick)",
        )
    people = r.get("people") or {}
    emp = _get(people, "employees", "facade", "p95_ms")
    row(
        "`GET /employees` p95 ≤ 20 ms with 10,000 users",
        emp,
        None if emp is None else emp <= 20,
        f" ms ({_get(people, 'employees', 'p95_ratio')}× whoami)",
        "" if people.get("users") in (None, 10_000) else f"{people.get('users')} users (quick)",
    )
    wide = _get(people, "conversations", "facade", "p95_ms")
    row(
        "`GET /conversations` p95 with the wider user objects (no target of its own; "
        "the 200-conversation target above)",
        wide,
        None,
        f" ms at {people.get('conversation_count')} conversations "
        f"({_get(people, 'conversations', 'p95_ratio')}× "
        "whoami)",
    )
    rel = _get(r.get("relations"), "p50_ratio_same_page")
    row(
        "page with relations p50 ≤ 1.2× Synapse `/messages`",
        rel,
        None if rel is None else rel <= 1.2,
        "×",
    )
    landed = _get(r.get("failover"), "first_txn_on_standby", "p50_ms")
    lost = _get(r.get("failover"), "lost")
    row(
        "receiver killed in a burst: first transaction on the standby ≤ 5 s, 0 lost",
        None if landed is None else round(landed / 1000, 2),
        None if landed is None else landed <= 5000 and lost == 0,
        f" s p50, {lost} lost",
    )
    fallback = _get(r.get("relations"), "without_msc3874", "p50_ratio_same_page")
    row(
        "the same, homeserver without MSC3874 (no target; docs/operator-guide.md)",
        fallback,
        None,
        "×",
    )
    media = r.get("media")
    row(
        "page of 50 files, every URL signed, vs Synapse `/messages` (no target; issue 19)",
        _get(media, "p50_ratio"),
        None,
        f"× (signing pass {_get(media, 'sign_ms', 'p50_ms')} ms, encoding "
        f"{_get(media, 'encode_ms', 'p50_ms')} ms)",
    )
    return rows  # fmt: skip


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def detail_sections(steps: dict[str, dict[str, Any]]) -> list[str]:
    out: list[str] = []
    r = {name: entry.get("results") for name, entry in steps.items()}
    f = r.get("facade")
    if f:
        s = f["send_latency"]
        out += ["### `POST /api/chat/send` vs a direct Synapse send (interleaved)", "",
                table(["", "n", "p50 ms", "p95 ms", "mean ms"],
                      [[k, s[k]["n"], s[k]["p50_ms"], s[k]["p95_ms"], s[k]["mean_ms"]]
                       for k in ("direct", "facade")]), ""]  # fmt: skip
        t = f.get("throughput")
        if t:
            out += [f"Throughput, {t['senders']} senders, {t['messages_per_round']} messages a "
                    "round (msgs/s, rounds alternate which side goes first):", "",
                    table(["round", "direct", "facade"],
                          [[i + 1, d, fa] for i, (d, fa) in
                           enumerate(zip(t["direct_msgs_per_s"], t["facade_msgs_per_s"],
                                         strict=False))]), ""]  # fmt: skip
        rows = []
        for key, label in (
            ("list_conversations", "`GET /conversations`, 200, in-process"),
            ("unread_count", "`GET /unread-count`"),
            ("search", "`GET /search`"),
        ):
            v = f.get(key)
            if not v:
                continue
            facade = v.get("facade", v)
            base = v.get("direct") or v.get("synapse_whoami")
            rows.append(
                [
                    label,
                    facade.get("p50_ms"),
                    facade.get("p95_ms"),
                    _get(base, "p50_ms"),
                    v.get("bridge_homeserver_requests"),
                ]
            )
        out += [
            table(
                [
                    "read",
                    "p50 ms",
                    "p95 ms",
                    "Synapse baseline p50 ms",
                    "homeserver calls meanwhile",
                ],
                rows,
            ),
            "",
            "Baselines: search vs Synapse `/search` over the same rooms; "
            "unread-count vs Synapse `whoami` (its cheapest authenticated call).",
            "",
        ]
    rt = r.get("realtime")
    if rt:
        lat = rt["latency"]
        b, d = lat["bridge_send_to_new_message"], lat["synapse_send_to_transaction"]
        out += ["### Real time", "",
                table(["path", "n", "p50 ms", "p95 ms"],
                      [["`POST /send` → `new_message` at another socket", b["n"], b["p50_ms"],
                        b["p95_ms"]],
                       ["direct `PUT /send` → appservice transaction at the bridge", d["n"],
                        d["p50_ms"], d["p95_ms"]]]), "",
                "Fan-out: sockets spread over the facade processes (sharing Redis with the "
                "bridge that receives transactions), messages sent through the first facade:",
                "",
                table(["sockets", "facades", "delivered", "p50 ms", "p95 ms", "max ms",
                       "connect all s", "facade CPU % (each)", "facade RSS MB (each)"],
                      [[p["sockets"], p["facade_processes"],
                        f"{p['deliveries']}/{p['deliveries_expected']}",
                        p["delivery_p50_ms"], p["delivery_p95_ms"], p["delivery_max_ms"],
                        p["connect_all_s"],
                        " / ".join(str(c) for c in p["facade_cpu_percent_while_sending"]),
                        " / ".join(str(c) for c in p["facade_rss_mb"]["after"])]
                       for p in rt["fanout"]]), ""]  # fmt: skip
        if failed := rt.get("fanout_failed"):
            out += [f"Fan-out to {failed['sockets']} sockets did not complete: "
                    f"`{failed['error']}`.", ""]  # fmt: skip
    out += scaleout_section(r.get("scaleout"))
    c = r.get("conversations")
    if c:
        out += ["### `GET /conversations` and `/unread-count` on a fresh facade process", "",
                table(["conversations", "first listing ms", "p50 ms", "p95 ms",
                       "unread-count p50 ms", "p95 ms", "homeserver calls", "facade RSS MB"],
                      [[p["size"], p["first_listing_ms"], p["next_listings"]["p50_ms"],
                        p["next_listings"]["p95_ms"], _get(p, "unread_count", "p50_ms"),
                        _get(p, "unread_count", "p95_ms"), p["homeserver_calls_all_listings"],
                        p.get("facade_rss_mb")] for p in c["curve"]]), ""]  # fmt: skip
        w = c.get("without_previews")
        if w:
            out += [
                f"Without stored previews ({w['conversations']} conversations, a fresh "
                f"process): first listing {w['first_listing_ms']} ms with "
                f"{w['homeserver_calls_first_listing']} homeserver calls, then p50 "
                f"{w['next_listings']['p50_ms']} ms.",
                "",
            ]
    fo = r.get("failover")
    if fo:
        out += [f"### Failover: the receiver killed during a {fo['messages']}-message burst", "",
                "SIGKILL a quarter into a burst from a matrix-nio user, a standby configured to "
                "receive beside it (docs/operator-guide.md, \"Scaling out\"), both behind "
                f"{fo.get('proxy', 'router')}; a socket on a third process counts live "
                "messages plus catch-up from its newest cursor.", "",
                table(["run", "lock taken s", "first transaction on the standby s", "lost",
                       "duplicated", "live", "caught up"],
                      [[i + 1, x["lock_taken_s"], x["first_txn_on_standby_s"], x["lost"],
                        x["duplicated"], x["live"], x["caught_up"]]
                       for i, x in enumerate(fo["runs"])]), ""]  # fmt: skip
    d = r.get("directory")
    if d:
        out += ["### Directory sync (a fresh Synapse and bridge database per size)", "",
                table(["users", "projects", "members each", "order", "direct s", "bridge s",
                       "ratio", "Synapse CPU s (direct / bridge)", "bridge writes",
                       "re-sync s", "re-sync writes",
                       "fresh process re-sync s", "fresh process RSS MB"],
                      [[p["users"], p["projects"], p["members"], p["order"],
                        _get(p, "direct", "seconds"), p["bridge_initial"]["seconds"],
                        p.get("initial_ratio"),
                        f"{_get(p, 'direct', 'synapse_cpu_s')} / "
                        f"{p['bridge_initial'].get('synapse_cpu_s')}",
                        p["bridge_initial"]["writes"],
                        p["bridge_unchanged_resync"]["seconds"],
                        p["bridge_unchanged_resync"]["writes"],
                        _get(p, "fresh_process", "resync_seconds"),
                        _get(p, "fresh_process", "rss_mb")] for p in d["curve"]]), "",
                *(f"- {note}" for note in d.get("skipped") or []),
                "",
                "The fresh process is a second bridge process (`python -m bridge`, no "
                "transactions) started after the initial sync, which runs the unchanged "
                "re-sync itself: its RSS is the bridge's with the whole directory loaded and "
                "no sockets.", ""]  # fmt: skip
    scale = scale_point()
    if scale is not None:
        run = scale["run"]
        out += ["### The 10,000-user point (`make bench-scale`, run on its own)", "",
                f"`python -m bench.run --scale` ({run['date']}, commit `{run['commit']}`, "
                f"{run['seconds']} s, load average {run['load_average']['start']} at the "
                f"start): the bridge's initial sync alone (no direct baseline: it would "
                f"double the time), then the unchanged re-sync in the same process and in a "
                f"fresh one.", "",
                table(["users", "projects", "members each", "bridge s", "Synapse CPU s",
                       "bridge writes", "re-sync s", "re-sync writes",
                       "fresh process re-sync s", "fresh process RSS MB"],
                      [[scale["users"], scale["projects"], scale["members"],
                        scale["bridge_initial"]["seconds"],
                        scale["bridge_initial"].get("synapse_cpu_s"),
                        scale["bridge_initial"]["writes"],
                        scale["bridge_unchanged_resync"]["seconds"],
                        scale["bridge_unchanged_resync"]["writes"],
                        _get(scale, "fresh_process", "resync_seconds"),
                        _get(scale, "fresh_process", "rss_mb")]]), ""]  # fmt: skip
    rel = r.get("relations")
    if rel:
        kinds = ("facade", "synapse_same_page", "synapse_limit_50", "synapse_bridge_request")
        out += ["### A 50-message page with relations vs Synapse `/messages`", "",
                "`synapse_same_page` is the page as a Matrix client asks for it (the target's "
                "yardstick); `synapse_bridge_request` is the facade's own call (its filter "
                "and limit). On a homeserver with MSC3874 the facade's filter leaves the 25 "
                "edits out; the second run is on one without it.", ""]  # fmt: skip
        for label, runs in (
            ("Synapse with MSC3874 (the devstack's)", rel),
            ("Synapse without MSC3874", rel.get("without_msc3874")),
        ):
            if not runs:
                continue
            out += [f"{label}: facade / same page **{runs['p50_ratio_same_page']}×**, "
                    f"facade / its own call {runs.get('p50_ratio_bridge_request')}× "
                    f"(limit {runs.get('bridge_request_limit')}).", "",
                    table(["", "n", "p50 ms", "p95 ms"],
                          [[k, runs[k]["n"], runs[k]["p50_ms"], runs[k]["p95_ms"]]
                           for k in kinds if k in runs]),
                    ""]  # fmt: skip
    return out


SCALEOUT_LABELS = {"direct": "Synapse direct", "facade_1": "1 facade", "facade_2": "2 facades"}


def scaleout_section(so: dict[str, Any] | None) -> list[str]:
    """Throughput and latency on each homeserver mode, and CPU per message per process
    (bench/scaleout.py; the failover time is bench/failover.py's section)."""
    if not so:
        return []
    modes = so.get("modes") or {}
    out = ["### Scale-out: monolithic Synapse vs Synapse with workers", "",
           "Each mode has its own Synapse on PostgreSQL, the bridge receiving transactions, and "
           "two facade processes; 32 senders; rounds rotate which side goes first. Worker "
           "mode: main, event persister, appservice sender, generic worker, and a router "
           "(bridge/devstack/workers.py).", ""]  # fmt: skip
    rows = []
    for mode, m in modes.items():
        t = m.get("throughput") or {}
        lat = m.get("latency") or {}
        rate = t.get("msgs_per_s") or {}
        rows.append([mode, rate.get("direct"), rate.get("facade_1"), rate.get("facade_2"),
                     t.get("ratio_facade_1"), t.get("ratio_facade_2"),
                     _get(lat, "bridge_send_to_new_message", "p50_ms"),
                     _get(lat, "bridge_send_to_new_message", "p95_ms"),
                     _get(lat, "synapse_send_to_transaction", "p50_ms")])  # fmt: skip
    out += [table(["homeserver", "direct msg/s", "1 facade msg/s", "2 facades msg/s",
                   "1 facade / direct", "2 facades / direct", "send → new_message p50 ms",
                   "p95 ms", "direct send → transaction p50 ms"], rows), ""]  # fmt: skip
    for mode, m in modes.items():
        cpu = _get(m, "throughput", "cpu_ms_per_message") or {}
        names = sorted({n for per in cpu.values() for n in per})
        if not names:
            continue
        out += [f"CPU ms per message, {mode} (user + system, /proc/<pid>/stat around each "
                "burst; `bridge_receiving` is the benchmark process, which hosts it):", "",
                table(["process", *(SCALEOUT_LABELS[k] for k in cpu)],
                      [[n, *(cpu[k].get(n) for k in cpu)] for n in names]), ""]  # fmt: skip
    if skipped := so.get("skipped"):
        out += [f"Not measured (time budget): {', '.join(skipped)}.", ""]
    return out


def profile_section(tables: dict[str, Any]) -> list[str]:
    if not tables:
        return []
    out = ["## Profile (cProfile, this run)", "",
           "Own time = time in the function itself; cumulative = with what it calls. Shares are "
           "of the profiled process's total own time during the phase (the in-process bridge, "
           "plus, for `transaction_path`, the socket client that runs in the same process).",
           ""]  # fmt: skip
    for phase, t in tables.items():
        out += [f"### `{phase}` ({t['total_s'][0][0]} s profiled)", "", "Top own time:", "",
                table(["function", "calls", "own s", "cum s", "own %"], t["own"]), "",
                "The bridge's functions by cumulative time:", "",
                table(["function", "calls", "own s", "cum s", "cum %"], t["bridge_cumulative"]),
                ""]  # fmt: skip
    return out


def plots(steps: dict[str, dict[str, Any]]) -> list[str]:
    """PNG plots under docs/benchmarks/; returns their markdown."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["(matplotlib is not installed: `pip install -e '.[bench]'` for the plots)", ""]
    r = {name: entry.get("results") for name, entry in steps.items()}
    made: list[str] = []
    for stale in ASSETS.glob("*.png"):  # no plot from an earlier run stays beside this one
        stale.unlink()

    def ecdf(ax: Any, values: list[float], label: str) -> None:
        ordered = sorted(values)
        n = len(ordered)
        ax.step(ordered, [(i + 1) / n for i in range(n)], where="post", label=label)

    panels = []
    if _get(r.get("facade"), "send_latency", "samples_ms"):
        s = r["facade"]["send_latency"]["samples_ms"]
        panels.append(
            (
                "POST /send vs direct send",
                [(s["facade"], "facade"), (s["direct"], "Synapse direct")],
            )
        )
    if _get(r.get("realtime"), "latency", "samples_ms"):
        s = r["realtime"]["latency"]["samples_ms"]
        panels.append(
            (
                "send → new_message vs send → transaction",
                [(s["bridge"], "facade → socket"), (s["synapse"], "direct → transaction")],
            )
        )
    if _get(r.get("relations"), "samples_ms"):
        s = r["relations"]["samples_ms"]
        panels.append(
            (
                "page with relations vs /messages",
                [(s["facade"], "facade"), (s["same_page"], "Synapse same page")],
            )
        )
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
        for ax, (title, series) in zip(axes[0], panels, strict=True):
            for values, label in series:
                ecdf(ax, values, label)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("ms")
            ax.set_ylabel("fraction ≤ x")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(ASSETS / "latency.png", dpi=110)
        plt.close(fig)
        made.append("![Latency distributions, facade vs direct](benchmarks/latency.png)")
    fan = _get(r.get("realtime"), "fanout")
    if fan:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        xs = [p["sockets"] for p in fan]
        ax.plot(xs, [p["delivery_p50_ms"] for p in fan], "o-", label="p50")
        ax.plot(xs, [p["delivery_p95_ms"] for p in fan], "s-", label="p95")
        ax.set_title(f"fan-out delivery over {fan[0]['facade_processes']} facade processes",
                     fontsize=10)  # fmt: skip
        ax.set_xlabel("sockets")
        ax.set_ylabel("ms")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(ASSETS / "fanout.png", dpi=110)
        plt.close(fig)
        made.append("![Fan-out latency vs sockets](benchmarks/fanout.png)")
    curve = list(_get(r.get("directory"), "curve") or [])
    scale = scale_point()
    if curve and scale and scale["users"] > max(p["users"] for p in curve):
        curve.append(scale)  # the 10,000-user point of `make bench-scale`, bridge only
    if curve:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        xs = [p["users"] for p in curve]
        direct = [(p["users"], _get(p, "direct", "seconds")) for p in curve]
        direct = [(x, y) for x, y in direct if y is not None]
        ax.plot(xs, [p["bridge_initial"]["seconds"] for p in curve], "o-", label="bridge initial")
        if direct:
            ax.plot(*zip(*direct, strict=True), "s--", label="direct calls")
        ax.plot(xs, [p["bridge_unchanged_resync"]["seconds"] for p in curve], "^-",
                label="bridge unchanged re-sync")  # fmt: skip
        ax.set_title("directory sync time vs size (projects = users / 10)", fontsize=10)
        if max(xs) >= 10 * min(xs):
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel("users (10,000: `make bench-scale`)" if scale in curve else "users")
        ax.set_ylabel("s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(ASSETS / "directory.png", dpi=110)
        plt.close(fig)
        made.append("![Sync time vs directory size](benchmarks/directory.png)")
    modes = _get(r.get("scaleout"), "modes") or {}
    if any(_get(m, "throughput", "msgs_per_s") for m in modes.values()):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        ax = axes[0]
        width = 0.8 / len(SCALEOUT_LABELS)
        for i, (kind, label) in enumerate(SCALEOUT_LABELS.items()):
            values = [_get(m, "throughput", "msgs_per_s", kind) or 0 for m in modes.values()]
            ax.bar([x + i * width for x in range(len(modes))], values, width, label=label)
        ax.set_xticks([x + width for x in range(len(modes))], list(modes))
        ax.set_title("throughput, 32 senders", fontsize=10)
        ax.set_ylabel("messages/s")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
        ax = axes[1]
        for mode, m in modes.items():
            samples = _get(m, "latency", "samples_ms") or {}
            if samples.get("bridge"):
                ecdf(ax, samples["bridge"], f"{mode}: send → new_message")
            if samples.get("synapse"):
                ecdf(ax, samples["synapse"], f"{mode}: direct → transaction")
        ax.set_title("latency by homeserver mode", fontsize=10)
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction ≤ x")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(ASSETS / "scaleout.png", dpi=110)
        plt.close(fig)
        made.append("![Throughput and latency, monolithic Synapse vs workers]"
                    "(benchmarks/scaleout.png)")  # fmt: skip
    conv = _get(r.get("conversations"), "curve")
    if conv:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        xs = [p["size"] for p in conv]
        ax.plot(xs, [p["next_listings"]["p50_ms"] for p in conv], "o-", label="list p50")
        ax.plot(xs, [p["next_listings"]["p95_ms"] for p in conv], "s-", label="list p95")
        ax.plot(xs, [_get(p, "unread_count", "p95_ms") for p in conv], "^-",
                label="unread-count p95")  # fmt: skip
        ax.set_title("GET /conversations vs conversations", fontsize=10)
        ax.set_xlabel("conversations of the user")
        ax.set_ylabel("ms")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(ASSETS / "conversations.png", dpi=110)
        plt.close(fig)
        made.append("![Conversation list time vs conversations](benchmarks/conversations.png)")
    return [*made, ""]


def write_report(run: dict[str, Any], tables: dict[str, Any]) -> None:
    steps = run["steps"]
    m = run["machine"]
    busy = max(run["load_average"]["start"], run["load_average"]["end"]) > 0.5 * m["cores"]
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `make bench` (bench/run.py); edit docs/benchmarks-notes.md, "
        "which is copied in below, not this file. -->",
        "",
        f"- command: `{run['command']}`{' (reduced sizes)' if run['quick'] else ''}"
        f"{' (under cProfile: figures not comparable to the targets)' if run['profile'] else ''}",
        f"- date: {run['date']}",
        f"- commit: `{run['commit']}`{' (with uncommitted changes)' if run['dirty'] else ''}",
        f"- machine: {m['cores']} cores ({m.get('cpu', '?')}), {m.get('memory_gib')} GiB memory; "
        f"load average {run['load_average']['start']} at the start, "
        f"{run['load_average']['end']} at the end"
        + (" — **a busy machine: the absolute figures are noisy; the ratios are measured "
           "side by side in one run**" if busy else ""),
        f"- wall time: {run['seconds']} s ("
        + ", ".join(f"{k} {v['seconds']} s" for k, v in steps.items()) + ")",
        "- Synapse and the bridge on PostgreSQL, Redis; each benchmark starts its own Synapse.",
        "",
        "## Targets",
        "",
        table(["target", "measured", "status"], targets(steps)),
        "",
    ]  # fmt: skip
    failed = {k: v for k, v in steps.items() if v["rc"] != 0}
    for name, entry in failed.items():
        partial = " (what it measured before is in the tables)" if entry.get("results") else ""
        lines += [f"**`{name}` failed** (rc {entry['rc']}){partial}; the end of its output:", "",
                  "```", entry.get("log_tail", "").strip()[-1500:], "```", ""]  # fmt: skip
    lines += ["## Plots", "", *plots(steps), "## Size → time, and the details", ""]
    lines += detail_sections(steps)
    lines += profile_section(tables)
    if NOTES.exists():
        lines += ["", NOTES.read_text().strip(), ""]
    REPORT.write_text("\n".join(lines).rstrip() + "\n")


def scale_run() -> int:
    start = time.monotonic()
    run: dict[str, Any] = {
        "command": "python -m bench.run --scale",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git("rev-parse", "--short=12", "HEAD") or "unknown",
        "machine": machine(),
        "load_average": {"start": load_average()},
    }
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        entry = run_step(SCALE_STEP, False, Path(tmp), None, SCALE_BUDGET_S)
    run["load_average"]["end"] = load_average()
    run["seconds"] = round(time.monotonic() - start, 1)
    if entry["rc"] != 0 or not entry.get("results"):
        print(entry.get("log_tail", ""), flush=True)
        return 1
    SCALE.write_text(json.dumps({**run, "results": entry["results"]}, indent=1))
    if (ASSETS / "results.json").exists():
        saved = json.loads((ASSETS / "results.json").read_text())
        write_report(saved, saved.pop("profile_tables", {}))
    print(f"[bench] wrote {SCALE.relative_to(ROOT)} in {run['seconds']} s", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", default=bool(os.environ.get("BENCH_QUICK")))
    parser.add_argument(
        "--profile", action="store_true", default=bool(os.environ.get("BENCH_PROFILE"))
    )
    parser.add_argument("--only", help="comma-separated benchmark names (default: all)")
    parser.add_argument(
        "--report-only", action="store_true",
        help="rewrite docs/benchmarks.md from docs/benchmarks/results.json (after editing "
        "the notes), without running anything",
    )  # fmt: skip
    parser.add_argument(
        "--scale", action="store_true",
        help="measure the 10,000-user directory point alone (30-40 minutes here) into "
        "docs/benchmarks/scale.json, then rebuild the report",
    )  # fmt: skip
    parser.add_argument(
        "--budget", type=float, default=float(os.environ.get("BENCH_BUDGET") or 840),
        help="seconds for the whole run; the directory curve, last, gets what is left",
    )  # fmt: skip
    args = parser.parse_args()
    ASSETS.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        saved = json.loads((ASSETS / "results.json").read_text())
        write_report(saved, saved.pop("profile_tables", {}))
        return 0
    if args.scale:
        return scale_run()
    chosen = [s for s in STEPS if not args.only or s.name in args.only.split(",")]
    start = time.monotonic()
    run: dict[str, Any] = {
        "command": " ".join(
            [*(f"{k}=1" for k in ("BENCH_QUICK", "BENCH_PROFILE") if os.environ.get(k)),
             "python -m bench.run", *sys.argv[1:]]
        ) if sys.argv else "python -m bench.run",
        "quick": args.quick,
        "profile": args.profile,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git("rev-parse", "--short=12", "HEAD") or "unknown",
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "machine": machine(),
        "load_average": {"start": load_average()},
        "steps": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        work = Path(tmp)
        profile_dir = work / "profiles" if args.profile else None
        if profile_dir:
            profile_dir.mkdir()
        for step in chosen:
            # The last step (the directory curve) gets what is left of the total budget.
            left = int(args.budget - (time.monotonic() - start))
            budget = step.budget_s if step is not STEPS[-1] else max(120, left - 60)
            run["steps"][step.name] = run_step(step, args.quick, work, profile_dir, budget)
        tables = profile_tables(profile_dir) if profile_dir else {}
    run["load_average"]["end"] = load_average()
    run["seconds"] = round(time.monotonic() - start, 1)
    (ASSETS / "results.json").write_text(json.dumps({**run, "profile_tables": tables}, indent=1))
    write_report(run, tables)
    print(f"[bench] wrote {REPORT.relative_to(ROOT)} in {run['seconds']} s", flush=True)
    return 0 if all(v["rc"] == 0 for v in run["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
