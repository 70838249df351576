"""The small error tree the runtime catches by category (style notes: psycopg, Benthos).

- `ConfigError`: the site configuration is wrong; fatal at start-up, rejected on reload.
- `TransientError`: a peer is away (broker, server, database); the runtime retries with back-off.
- `DataError`: one message or value is bad; it is counted, dead-lettered, and the rest goes on.
"""

from __future__ import annotations


class ValvojaError(Exception):
    """Base of every error the program raises on purpose."""


class ConfigError(ValvojaError):
    """One or more configuration problems, each naming the file, the key and what is wrong."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class TransientError(ValvojaError):
    """A peer is not reachable now; retrying later may succeed."""


class NotConnectedError(TransientError):
    """A collector or sink lost its connection; the runtime owns the reconnect."""


class DataError(ValvojaError):
    """A single message or value cannot be used; it is dead-lettered, the stream goes on."""
