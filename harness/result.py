"""What an apply or destroy hands back: ApplyResult, or ApplyError with what was done before it."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ApplyResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)  # one entry per command run, completion order
    outputs: dict = field(default_factory=dict)
    seconds: float = 0.0
    #: per host: most SSH connections open at once, dials made, dial attempts refused and retried
    dials: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # what the provider would warn about


class ApplyError(Exception):
    """A failed apply; the message is already masked."""

    def __init__(self, message: str, *, resource: str | None = None, host: str | None = None,
                 step: str | None = None, exit_status: int | None = None, stderr: str | None = None):
        super().__init__(message)
        self.resource, self.host, self.step = resource, host, step
        self.exit_status, self.stderr = exit_status, stderr
        self.partial: ApplyResult | None = None  # what the failed run did before it stopped


class Skipped(Exception):
    """A registration after the first failure: the engine schedules nothing new."""
