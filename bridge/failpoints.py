"""Named failpoints for crash tests: ``BRIDGE_FAILPOINTS=name@N`` kills this process with
SIGKILL the Nth time the code passes ``failpoint("name")`` (N defaults to 1).

Production never sets the variable, and then a failpoint costs one dict lookup. Several
points are separated by commas. The names in use are listed in docs/realtime.md ("The
delivery log").
"""

from __future__ import annotations

import os
import signal

ENV = "BRIDGE_FAILPOINTS"


def _parse(spec: str) -> dict[str, int]:
    points: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = part.partition("@")
        points[name] = int(count) if count.isdigit() else 1
    return points


_ARMED = _parse(os.environ.get(ENV, ""))


def failpoint(name: str) -> None:
    """Die here (SIGKILL, no cleanup) when this point is armed and its count runs out."""
    if not _ARMED or name not in _ARMED:
        return
    _ARMED[name] -= 1
    if _ARMED[name] <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
