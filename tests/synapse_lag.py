"""A Synapse module for tests: holds a message back between its creation and its storage.

Synapse picks a message's prev_events (and so its depth) when it creates the event, then
runs spam checks, then stores it. A message carrying ``LAG_KEY`` waits that many
milliseconds in the spam check, as a slow homeserver path would, while other messages are
created and stored after it at higher depths: it is then stored later than they are, at a
lower depth, as concurrent sends do by chance. The session's Synapse loads it
(tests/conftest.py); messages without the key are untouched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported by tests for LAG_KEY, where Synapse need not be loaded
    from synapse.module_api import ModuleApi

LAG_KEY = "com.crm.test.lag_ms"


class LaggingSends:
    def __init__(self, config: dict[str, Any], api: ModuleApi) -> None:
        self.api = api
        api.register_spam_checker_callbacks(check_event_for_spam=self.check_event_for_spam)

    @staticmethod
    def parse_config(config: dict[str, Any]) -> dict[str, Any]:
        return config

    async def check_event_for_spam(self, event: Any) -> Any:
        from synapse.module_api import NOT_SPAM

        lag = event.content.get(LAG_KEY)
        if isinstance(lag, int) and 0 < lag <= 5000:
            await self.api.sleep(lag / 1000)
        return NOT_SPAM
