"""``python -m bridge doctor``: checks a deployment and says how to fix what is wrong.

Read-only: it never migrates the database, writes the config or acknowledges a
transaction. See :mod:`.homeserver` for how the hs_token is checked.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TextIO

from .homeserver import check_homeserver
from .local import check_config, check_database, check_redis, check_registration_file
from .report import Finding, Status, print_report


async def diagnose(config_path: str, registration_path: str) -> list[Finding]:
    config, loaded = check_config(config_path)
    findings = [loaded]
    if config is None:
        return findings
    findings.append(check_registration_file(config, config_path, registration_path))
    findings += await check_homeserver(config, loaded.status is Status.OK)
    findings.append(await check_database(config))
    findings.append(await check_redis(config))
    return findings


async def doctor_command(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    # The findings say it all; the clients' own warnings would only repeat them.
    for name in ("bridge", "mau", "aiohttp"):
        logging.getLogger(name).addHandler(logging.NullHandler())
        logging.getLogger(name).propagate = False
    return print_report(await diagnose(args.config, args.registration), out)
