"""The thread that drives an engine (engine.Engine, encoder.EncoderEngine): `step` until stopped,
sleeping on `wake` while there is nothing to do, with the adapter catalog's loader thread beside it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import torch

log = logging.getLogger("loraops.serve")


class EngineThread:
    def __init__(self, name: str, step: Callable[[], bool], catalog, wake: threading.Event,
                 on_error: Callable[[], None] = lambda: None):
        """step: one engine iteration, False if nothing ran; catalog: catalog.AdapterCatalog; wake:
        set by whoever gives the engine work; on_error: called after a step raised (a bug, logged)."""
        self.name, self._step, self.catalog, self.wake, self._on_error = name, step, catalog, wake, on_error
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._threads_wanted = torch.get_num_threads()

    def start(self) -> None:
        self._threads_wanted = torch.get_num_threads()
        self.catalog.start()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        """The engine and loader threads are running."""
        return self._thread is not None and self._thread.is_alive() and self.catalog.alive()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        self.catalog.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        # OpenMP's thread count is per OS thread: adopt the one set (torch.set_num_threads) by the starter.
        torch.set_num_threads(self._threads_wanted)
        while not self._stop.is_set():
            self.wake.clear()
            try:
                if not self._step():
                    self.wake.wait(timeout=0.05)
            except Exception:                              # a bug must not kill the server silently
                log.exception("%s: step failed", self.name)
                self._on_error()
