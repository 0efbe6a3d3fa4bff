"""Transactions the homeserver skipped, and one refusal to make it send them.

Synapse numbers appservice transactions with one counter and sends ours in order, so
after txn N the next one is N+1. Synapse 1.163 can strand one: a sender that sees the
appservice DOWN stores its transaction while the recoverer, having found nothing left,
marks it UP again. Nothing sends the stored transaction until a later delivery fails, and
neither a restart (it only recovers services marked DOWN) nor a ping (it only hurries a
running recoverer) helps. So when an id is skipped and stays missing for
``appservice.gap_recovery_seconds``, the next transaction is answered 503 once: Synapse
marks us down and its recoverer sends what it stored, oldest first (the stranded one,
then the refused one). When no next transaction comes, the receiver makes one with a
probe event (probe.py, intake.py). A transaction with ephemeral events is never refused
(Synapse does not store those, a refusal would lose them); the next one without is. A new
receiver goes on from the transaction log (``resume``): holes among the ids recorded last
are gaps its predecessor was stopped before recovering, and are open again.

Only integer ids take part. A drop in ids is a new epoch (Synapse on SQLite counts from 1
again after a restart), not a gap. Each gap is refused for once; if the refusal does not
fill it, it is given up with a warning. A refusal that filled nothing means the counter is
shared with other appservices on the homeserver (skipped ids are theirs): after
``FRUITLESS_BEFORE_OFF`` such refusals in a row, gap recovery turns itself off for this
process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("bridge.matrix.gaps")

# Beyond this many missing ids at once, the jump is not a stranded transaction.
MAX_GAP = 100
# Most missing ids waiting at once; jumps that keep coming faster than refusals fill them
# are not stranded transactions either.
MAX_OPEN = 2 * MAX_GAP
# Fruitless refusals in a row after which recovery turns itself off (a shared counter).
FRUITLESS_BEFORE_OFF = 3


def parse_id(txn_id: str) -> int | None:
    """The sequence number of a Synapse-style id; None for ids of other homeservers."""
    return int(txn_id) if txn_id.isascii() and txn_id.isdigit() and len(txn_id) < 19 else None


@dataclass
class GapTracker:
    timeout: float  # seconds a gap stays open before a refusal; 0 turns recovery off
    clock: Callable[[], float] = time.monotonic
    last: int | None = None  # the highest id handled in this epoch
    # Missing id -> when it was found missing. Capped at MAX_OPEN (the oldest are given up
    # on, with a warning); emptied by a new epoch or when recovery turns itself off.
    open: dict[int, float] = field(default_factory=dict)
    # The id answered 503, and the gaps that refusal is meant to fill.
    refused: int | None = None
    awaited: set[int] = field(default_factory=set)
    asked: int = 0  # how many gaps that refusal asked for
    # Gaps given up on: one arriving late is not a drop in ids (a new epoch). Capped: at
    # most MAX_GAP are remembered.
    abandoned: set[int] = field(default_factory=set)
    disabled: bool = False
    # Refusals in a row that brought back none of what they asked for. One alone is not
    # enough to turn recovery off: a receiver restart has shown ids missing that were
    # never ours to get (rolling-restart soak, 2026-12-07), and with recovery off the next
    # real strand stays stranded.
    fruitless: int = 0

    @property
    def enabled(self) -> bool:
        return self.timeout > 0 and not self.disabled

    def should_refuse(self, txn_id: str) -> bool:
        """Whether to answer this new (not replayed) transaction 503 so that the homeserver
        goes into recovery. Marks the refusal; at most once per gap."""
        n = parse_id(txn_id)
        if n is None or not self.enabled or self.refused is not None:
            return False
        if n in self.open or self.last is None or n <= self.last:
            return False  # a missing one arriving, or a new epoch: nothing to recover
        due = self.due()
        if not due:
            return False
        self.refused, self.awaited, self.asked = n, due, len(due)
        log.warning(
            "Transaction(s) %s never arrived from the homeserver; refusing transaction %s "
            "once (503) so that it resends what it stored",
            _ids(due),
            txn_id,
        )
        return True

    def due(self) -> set[int]:
        """Missing ids open for ``timeout`` seconds, when no refusal is under way: the next
        new transaction is refused for them (the receiver probes for one if none comes)."""
        if not self.enabled or self.refused is not None:
            return set()
        now = self.clock()
        return {gap for gap, since in self.open.items() if now - since >= self.timeout}

    def resume(self, recent: list[str]) -> None:
        """Go on from the log: ``recent`` are the ids it recorded last, newest first (up to
        MAX_GAP + 1). Holes among them are gaps that an earlier receiver did not live to
        recover (a handover within ``timeout`` of the skip); they are open again, due a
        ``timeout`` from now. Only the newest epoch counts: going back in time, an id
        higher than the one after it is where the homeserver started counting again."""
        run: list[int] = []
        for txn_id in recent:
            n = parse_id(txn_id)
            if n is None:
                continue
            if run and n >= run[-1]:
                break
            run.append(n)
        for n in reversed(run):  # oldest first, as they were handled
            self._advance(n)

    def handled(self, txn_id: str) -> None:
        """A transaction was handled and recorded."""
        n = parse_id(txn_id)
        if n is None or self.timeout <= 0:
            return
        if n in self.open or n in self.abandoned:
            self.open.pop(n, None)
            self.abandoned.discard(n)
            self.awaited.discard(n)
            log.info("Transaction %s, missing until now, arrived", txn_id)
        elif self.last is None or n > self.last:
            self._advance(n)
        else:
            # Ids dropped: the homeserver counts again (restart on SQLite). Old gaps belong
            # to the old epoch, where nothing will ever fill them.
            self.last, self.open, self.abandoned = n, {}, set()
            self.refused, self.awaited, self.asked = None, set(), 0
        if self.refused is not None and n >= self.refused:
            self._settle()

    def _advance(self, n: int) -> None:
        """``n`` is the highest id yet: the ids skipped since the last one are open gaps
        (unless the jump is too wide to be a stranded transaction)."""
        if self.last is not None and 1 < n - self.last <= MAX_GAP + 1 and self.enabled:
            now = self.clock()
            self.open.update((gap, now) for gap in range(self.last + 1, n))
            self._cap_open()
        self.last = n

    def _cap_open(self) -> None:
        if len(self.open) <= MAX_OPEN:
            return
        dropped = sorted(self.open)[: len(self.open) - MAX_OPEN]
        for gap in dropped:
            del self.open[gap]
            self.awaited.discard(gap)
        log.warning(
            "More than %d transactions missing at once; giving up on the oldest: %s",
            MAX_OPEN,
            _ids(set(dropped)),
        )

    def _settle(self) -> None:
        """The refused transaction came back: what the recovery did not bring is lost."""
        if self.awaited:
            for gap in self.awaited:
                self.open.pop(gap, None)
            if len(self.abandoned) < MAX_GAP:
                self.abandoned.update(self.awaited)
            log.warning(
                "Transaction(s) %s did not come back after the refusal; giving up on them",
                _ids(self.awaited),
            )
        fruitless = self.asked > 0 and len(self.awaited) == self.asked
        self.fruitless = self.fruitless + 1 if fruitless else 0
        if self.fruitless >= FRUITLESS_BEFORE_OFF:
            self.disabled = True
            self.open.clear()
            log.warning(
                "%d refusals in a row brought none of the skipped transactions back: the "
                "homeserver's transaction counter is shared with other appservices. Gap "
                "recovery is off until restart.",
                self.fruitless,
            )
        self.refused, self.awaited, self.asked = None, set(), 0


def _ids(ids: set[int]) -> str:
    return ", ".join(str(i) for i in sorted(ids))
