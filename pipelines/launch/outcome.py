"""What a launch returns (`LaunchResult`), how it refuses (`LaunchError`, one line), and `Background` (work in a
thread whose error the driver re-raises). Plain: the driver, the recorder and the resource checks share it without
importing each other."""
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


class Background:
    """`fn(*args)` in a daemon thread, started at once: `ready()` without waiting, `get()` waits and returns its value
    or raises its error in the caller's thread. The launch's late imports and its store opening (the store opened or
    created, the closings done, the parent run started, while Tune starts the trials) run in one each."""

    def __init__(self, fn, *args, name: Optional[str] = None):
        import threading

        self.value, self.error = None, None
        self._thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True, name=name)
        self._thread.start()

    def _run(self, fn, *args):
        try:
            self.value = fn(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised by get() in the caller's thread
            self.error = e

    def ready(self) -> bool:
        return not self._thread.is_alive()

    def get(self):
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.value
