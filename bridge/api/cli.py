"""``python -m bridge token <crmUserId>``: a development JWT signed with auth.secret."""

from __future__ import annotations

import argparse
import sys

from ..config import Config
from .auth import JwtVerifier


def token_command(config: Config, args: argparse.Namespace) -> int:
    try:
        token = JwtVerifier.from_config(config).mint(str(args.crm_user_id), int(args.ttl))
    except ValueError as e:
        print(f"Cannot mint a token: {e}", file=sys.stderr)
        return 2
    print(token)
    return 0
