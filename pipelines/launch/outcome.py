"""What a launch returns (`LaunchResult`) and how it refuses (`LaunchError`, one line). Plain data: the driver, the
recorder and the resource checks share it without importing each other."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional


class LaunchError(ValueError):
    """A launch that cannot start (cluster, resources, nothing to resume); one line."""


@dataclass
class LaunchResult:
    experiment_id: Optional[str]
    parent_run_id: Optional[str]
    skipped: int  # cell × seed already FINISHED
    finished: int = 0
    failed: int = 0
    killed: int = 0
    errors: Dict[str, str] = field(default_factory=dict)
    phases: Dict[str, float] = field(default_factory=dict)  # seconds, for the launch's log


def one_line(text: str, limit: int = 500) -> str:
    lines = [l.strip() for l in str(text).strip().splitlines() if l.strip()]
    # the last line of a traceback names the exception; prefer it
    line = lines[-1] if lines else ""
    return line[:limit]
