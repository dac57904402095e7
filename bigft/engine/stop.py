"""Stopping a run early and cleanly: a signal asks, the ranks agree, a checkpoint is written.

Slurm warns a job before its time limit or a preemption with a signal (`--signal`). A signal
reaches each rank at a different moment, mid-step; stopping there would leave ranks in different
collectives. So the handler only raises a flag, and the loop, after every optimizer step, sums the
flags over all ranks: every rank sees the same total and stops after the same step.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

log = logging.getLogger(__name__)


class Preempted(Exception):
    """The run stopped on request after `step` with its checkpoint written; it can resume."""

    def __init__(self, step: int, signal_name: str) -> None:
        super().__init__(f"stopped after step {step} on {signal_name}; checkpoint written")
        self.step = step
        self.signal_name = signal_name


class StopRequest:
    """Turn the given signals into a flag the training loop polls (a context manager).

    The previous handlers come back on exit: under Hydra's submitit launcher the job process
    has handlers of its own.
    """

    def __init__(self, signal_names: list[str]) -> None:
        self.signals = [_parse(name) for name in signal_names]
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> StopRequest:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: the step in progress (and its collectives) must finish first.
        if self.received is None:
            self.received = signal.Signals(signum)
            log.warning("received %s: stopping after this step", self.received.name)

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def signal_name(self) -> str:
        return self.received.name if self.received is not None else "another rank's signal"


def _parse(name: str) -> signal.Signals:
    """'USR2', 'SIGUSR2' or '12' → signal.SIGUSR2."""
    text = str(name).strip().upper()
    if text.isdigit():
        return signal.Signals(int(text))
    try:
        return signal.Signals[text if text.startswith("SIG") else f"SIG{text}"]
    except KeyError:
        from bigft.errors import ConfigError

        raise ConfigError(f"launcher.signal={name!r} is not a signal name (e.g. USR2)") from None
