"""Command line: run the bridge, generate a registration, and small operator verbs.

python -m bridge [-c config.yaml]                 run the bridge
python -m bridge -g [-c config.yaml] [-r reg.yaml] write secrets and registration.yaml
python -m bridge dev                              local Synapse + bridge under .dev/
python -m bridge dev --synapse-workers            the same with Synapse split into workers
python -m bridge sync snapshot.json [--dry-run]   reconcile the CRM directory
python -m bridge token <crmUserId>                mint a development JWT
python -m bridge doctor [-c config.yaml] [-r reg.yaml]  check the deployment, say how to fix it
python -m bridge export <conversationId|projectId> [-o file]  archive a history as JSON lines
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from .config import Config, ConfigError
from .logs import configure_logging
from .startup import ExitCode, StartupError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bridge",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", default="config.yaml", help="config file")
    parser.add_argument(
        "-g",
        "--generate-registration",
        action="store_true",
        help="generate secrets into the config and write the registration",
    )
    parser.add_argument(
        "-r",
        "--registration",
        default="registration.yaml",
        help="registration file to write with -g",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the bridge (the default)")
    dev = sub.add_parser("dev", help="run a local Synapse and the bridge under .dev/")
    dev.add_argument("--dir", default=".dev", help="where the dev stack keeps its state")
    dev.add_argument("--synapse-port", type=int, default=8008)
    dev.add_argument("--bridge-port", type=int, default=29340)
    dev.add_argument("--no-demo", action="store_true", help="no /demo web client and no demo data")
    dev.add_argument(
        "--synapse-workers",
        action="store_true",
        help="Synapse split into workers (main, event persister, appservice sender, generic "
        "worker, a router) on PostgreSQL and a Redis of its own",
    )
    dev.add_argument(
        "--synapse-postgres",
        default="postgres://postgres@127.0.0.1:5432/postgres",
        help="with --synapse-workers: the PostgreSQL server whose database "
        "'bridge_dev_synapse' (created if missing) Synapse uses",
    )
    sync = sub.add_parser("sync", help="reconcile Matrix with a CRM snapshot file")
    sync.add_argument("snapshot", help="JSON file with {users: [...], projects: [...]}")
    sync.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    sync.add_argument(
        "--force",
        action="store_true",
        help="allow removing members when the snapshot is empty or partial",
    )
    token = sub.add_parser("token", help="mint a development JWT for a CRM user")
    token.add_argument("crm_user_id")
    token.add_argument("--ttl", type=int, default=86400, help="lifetime in seconds")
    doctor = sub.add_parser(
        "doctor",
        help="check config, registration, homeserver, tokens, database and Redis",
        description="Checks the config, the registration (-r), the homeserver, the as_token "
        "and hs_token, the database and Redis. Exits 1 if anything is wrong.",
    )
    _config_options(doctor, registration=True)
    export = sub.add_parser(
        "export", help="archive a conversation's history from Matrix, oldest first"
    )
    export.add_argument("target", help="a conversationId, or a projectId for its project room")
    export.add_argument("--format", default="jsonl", help="jsonl: one message object a line")
    export.add_argument("-o", "--output", help="file to write (default: stdout)")
    _config_options(export)
    args = sys.argv[1:] if argv is None else list(argv)
    return parser.parse_args(_dashed_ids_last(args, {"export": export, "token": token}))


def _dashed_ids_last(argv: list[str], verbs: dict[str, argparse.ArgumentParser]) -> list[str]:
    """An id that begins with "-" (a conversation id is a room id's body, which can) given to
    a verb taking one id would be read as an unknown option: it goes behind a "--"."""
    verb = next((i for i, a in enumerate(argv) if a in verbs), None)
    if verb is None or "--" in argv:
        return argv
    options = verbs[argv[verb]]._option_string_actions
    for i in range(verb + 1, len(argv)):
        arg, before = argv[i], options.get(argv[i - 1])
        if before is not None and before.nargs != 0:
            continue  # the value of an option
        if not arg.startswith("-"):
            return argv  # the id is there: anything else unknown is refused as usual
        if arg.split("=", 1)[0] not in options:
            return [*argv[:i], *argv[i + 1 :], "--", arg]
    return argv


def _config_options(parser: argparse.ArgumentParser, registration: bool = False) -> None:
    """-c (and -r) after the verb too; SUPPRESS keeps the top-level value when absent."""
    parser.add_argument("-c", "--config", default=argparse.SUPPRESS, help="config file")
    if registration:
        parser.add_argument(
            "-r", "--registration", default=argparse.SUPPRESS, help="registration file"
        )


def load_config(path: str) -> Config:
    config = Config.load(path)
    config.validate()
    return config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.generate_registration:
            from .registration import generate

            generate(Path(args.config), Path(args.registration))
            print(f"Wrote secrets to {args.config} and the registration to {args.registration}")
            return 0
        if args.command == "dev":
            from .devstack.run import run_dev

            return asyncio.run(run_dev(args))
        if args.command == "doctor":
            from .doctor import doctor_command

            return asyncio.run(doctor_command(args))
        config = load_config(args.config)
        if args.command == "token":
            from .api.cli import token_command

            return token_command(config, args)
        configure_logging(config)
        if args.command == "sync":
            from .crm.cli import sync_command

            return asyncio.run(sync_command(config, args))
        if args.command == "export":
            from .export import export_command

            return asyncio.run(export_command(config, args))
        from .app import run_bridge

        asyncio.run(run_bridge(config))
        return 0
    except ConfigError as e:
        print(f"Config error: {e}", file=sys.stderr)
        return ExitCode.CONFIG
    except StartupError as e:
        print(f"Startup failed: {e.reason}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
