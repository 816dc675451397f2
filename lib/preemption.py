"""SIGTERM/SIGUSR1 handling: finish the current step, checkpoint, exit 0 (METHOD.md §9.3)."""

import signal


class PreemptionFlag:
    """Records that the scheduler asked the job to stop; the training loop polls ``requested``."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def install(self) -> "PreemptionFlag":
        for name in self.SIGNALS:
            number = getattr(signal, name, None)
            if number is not None:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def uninstall(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number, _frame) -> None:
        self.signal_name = signal.Signals(number).name
