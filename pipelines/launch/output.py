"""Where a quiet launch's output goes: `quiet_output()` sends everything the process writes (Ray's worker logs
forwarded to the driver, Tune's own reporter, Lightning's banners), at the file-descriptor level, to a log file whose
path the launch prints, and yields the terminal for the live view (`console.Progress`). Its own module, free of
Ray: the driver enters it before Ray starts, and importing Tune (console.py) then would cost 1.3 s before Ray's
start instead of beside it (measured on this project's CPU machine)."""
from __future__ import annotations

import contextlib
import os
import sys


class UntilGone:
    """A launch's text stream on its terminal (the live view's; in the study server, sys.stdout and sys.stderr too)
    until the terminal is gone (a closed pipe, a hung-up terminal), then nothing: the file descriptor is pointed at
    /dev/null and what is written is dropped, so a launch whose client vanished ends as a Ctrl-C ends it instead of
    dying of a BrokenPipeError."""

    GONE = (BrokenPipeError, ConnectionResetError)

    def __init__(self, stream, fd: int):
        self._stream, self._fd = stream, fd

    def write(self, text):
        try:
            return self._stream.write(text)
        except self.GONE:
            self._gone()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except self.GONE:
            self._gone()

    def _gone(self):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, self._fd)
        os.close(null)
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()  # what was buffered goes to /dev/null

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def quiet_output(log_path: str):
    """Inside: file descriptors 1 and 2 (so Ray's forwarded worker output, Tune's reporter, C-level writes too)
    go to log_path; yields a text stream on the original stdout for the live view. Where stdout has no file
    descriptor (a test's captured stdout), nothing is redirected and sys.stdout is yielded."""
    try:
        fd_out, fd_err = sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield sys.stdout
        return
    sys.stdout.flush(), sys.stderr.flush()
    saved_out, saved_err = os.dup(fd_out), os.dup(fd_err)
    stream = os.fdopen(os.dup(saved_out), "w", buffering=1)
    console = UntilGone(stream, stream.fileno())
    log = open(log_path, "a", buffering=1)
    os.dup2(log.fileno(), fd_out), os.dup2(log.fileno(), fd_err)
    try:
        yield console
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(saved_out, fd_out), os.dup2(saved_err, fd_err)
        os.close(saved_out), os.close(saved_err)
        with contextlib.suppress(OSError, ValueError):  # a terminal that is gone
            stream.close()
        log.close()
