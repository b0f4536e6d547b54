"""A one-line progress display: step, loss, images/s, ETA. Redraws in a terminal, prints lines in logs."""

import sys
import time


class Progress:
    def __init__(self, total: int, desc: str, enabled: bool = True, stream=None, every_s: float = 10.0):
        # sys.stderr when called, not at import: it may have been replaced since (pytest's capture, notebooks)
        stream = sys.stderr if stream is None else stream
        self.total, self.desc, self.enabled, self.stream = total, desc, enabled, stream
        self.tty = stream.isatty()
        self.every_s = 0.2 if self.tty else every_s
        self.start = self.last = time.perf_counter()
        self.count = self.images = 0

    def update(self, images: int, **metrics: float) -> None:
        self.count += 1
        self.images += images
        now = time.perf_counter()
        if not self.enabled or (now - self.last < self.every_s and self.count < self.total):
            return
        self.last = now
        elapsed = now - self.start
        rate = self.images / elapsed if elapsed > 0 else 0.0
        eta = elapsed / self.count * (self.total - self.count)
        shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        line = f"{self.desc} {self.count}/{self.total} {shown} {rate:.0f} img/s ETA {eta:.0f}s"
        self.stream.write(f"\r{line:<100}" if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
