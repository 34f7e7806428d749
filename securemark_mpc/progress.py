"""Progress for people and for log files: a live bar on a terminal, none in a log.

Carriage-return bars flood a file (a party's log, CI output): when stderr is not a
terminal the bar is off, and the caller's one line per epoch is the record. The local
launcher asks for the bar (``SECUREMARK_PROGRESS=bar``) when it echoes the model owner
to a terminal, and keeps only each line's final state in the log file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

PROGRESS_VARIABLE = "SECUREMARK_PROGRESS"


def wants_bar(stream: IO[str]) -> bool:
    """A live bar only where a person watches: a terminal, or a launcher echoing to one."""
    return stream.isatty() or os.environ.get(PROGRESS_VARIABLE) == "bar"


def progress_bar(
    iterable: Iterable[Any], *, desc: str, enabled: bool = True, unit: str = "batch"
) -> tqdm:
    """A tqdm bar on stderr where it helps; otherwise a silent pass-through with the same API."""
    stream = sys.stderr
    return tqdm(
        iterable,
        desc=desc,
        unit=unit,
        disable=not (enabled and wants_bar(stream)),
        file=stream,
        leave=False,
    )


def final_states(pending: bytearray, chunk: bytes) -> bytes:
    """Append `chunk` to `pending` and return its finished lines as a log should keep them:
    each line's text after its last carriage return, blank ones dropped."""
    pending += chunk
    *finished, rest = bytes(pending).split(b"\n")
    pending[:] = rest
    kept = [line.rsplit(b"\r", 1)[-1] for line in finished]
    return b"".join(line + b"\n" for line in kept if line.strip())
