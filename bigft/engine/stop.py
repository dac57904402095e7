"""Stopping a run early and cleanly: a signal asks, the ranks agree, a checkpoint is written.

Slurm warns a job before its time limit or a preemption with a signal (`--signal`); every other
run stops the same way on Ctrl-C (SIGINT) and SIGTERM (`kill`, a scheduler's preemption) and
exits 130 or 143 with one line saying where the checkpoint is; a second Ctrl-C exits at once.
A signal reaches each rank at a different moment, mid-step; stopping there would leave ranks in
different collectives. So the handler only raises a flag, and the loop, after every optimizer
step, sums the flags over all ranks: every rank sees the same total and stops after the same step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
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

    def __init__(self, signal_names: list[str], *, second_sigint_exits: bool = False) -> None:
        self.signals = [_parse(name) for name in signal_names]
        self.received: signal.Signals | None = None
        self.second_sigint_exits = second_sigint_exits
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
        elif self.second_sigint_exits and signum == signal.SIGINT:
            exit_now()

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def signal_name(self) -> str:
        return self.received.name if self.received is not None else "another rank's signal"


# The environment variable that tells ranks started by bigft's own torchrun launch that the
# launching process reports a stop and sets the exit status (bigft/launch/local.py).
PARENT_REPORTS_STOP = "BIGFT_PARENT_REPORTS_STOP"


def exit_status(signal_name: str) -> int:
    """The shell's convention: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM)."""
    try:
        return 128 + signal.Signals[signal_name].value
    except KeyError:  # another rank's signal: this rank only took part in the stop
        return 128 + signal.SIGTERM.value


def exit_now() -> None:
    """A second Ctrl-C: leave at once. A checkpoint being written is left incomplete, which
    its missing manifest says, so the next run resumes from the one before."""
    sys.stderr.write("\nbigft: second Ctrl-C: exiting now, without a checkpoint\n")
    sys.stderr.flush()
    os._exit(128 + signal.SIGINT.value)


@contextlib.contextmanager
def stopping_on_signals(run_dir: str) -> Iterator[StopRequest]:
    """SIGINT and SIGTERM finish the step, write a checkpoint and exit (130, 143) saying so."""
    with StopRequest(["INT", "TERM"], second_sigint_exits=True) as stop:
        try:
            yield stop
        except Preempted as stopped:
            if int(os.environ.get("RANK", "0")) == 0:
                print(
                    f"bigft: {stopped} in {run_dir}; run the same command to resume",
                    file=sys.stderr,
                    flush=True,
                )
            sys.exit(0 if os.environ.get(PARENT_REPORTS_STOP) else exit_status(stopped.signal_name))


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
