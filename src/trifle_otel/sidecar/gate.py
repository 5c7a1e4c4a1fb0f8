"""The gate between receivers and checkpoints.

A receiver holds it *shared* from its write-ahead log append to the moment its spans are in
the pipeline's queue; a checkpoint's cut holds it *alone* while it seals the log's current
segment and takes the queue.  So what a cut takes is exactly what the log holds up to the
sealed segment: nothing appended before the seal is still on its way to the queue, nothing
taken was appended after it.  Receivers wait at most one cut (a segment rotation); a cut
waits at most for the appends in progress (one shared sync).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class Gate:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._shared = 0
        self._alone = False
        self._waiting_alone = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._alone or self._waiting_alone:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if not self._shared:
                    self._cond.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        with self._cond:
            self._waiting_alone += 1
            try:
                while self._alone or self._shared:
                    self._cond.wait()
            finally:
                self._waiting_alone -= 1
            self._alone = True
        try:
            yield
        finally:
            with self._cond:
                self._alone = False
                self._cond.notify_all()
