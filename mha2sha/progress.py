"""Progress of long stages (finding and splitting blocks, saving weights, verifying blocks).

On a terminal: a tqdm bar per stage on stderr. Otherwise (logs, CI): a plain log line at
about every tenth of the work, so that a long run in a pipeline still shows it is moving.
Either way the stage functions receive one callable ``progress(done, total)``.
"""

from __future__ import annotations

import logging

log = logging.getLogger("mha2sha")


class StageProgress:
    """``progress(done, total)`` for one stage; ``close()`` when the stage ends."""

    def __init__(self, stage: str, *, bar: bool):
        self.stage = stage
        self.bar = None
        self._use_bar = bar
        self._last_logged = -1

    def __call__(self, done: int, total: int) -> None:
        if self._use_bar:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=self.stage, unit="", leave=False, dynamic_ncols=True)
            self.bar.update(done - self.bar.n)
            return
        tenth = (10 * done) // max(total, 1)
        if done == total or (total >= 10 and tenth > self._last_logged):
            self._last_logged = tenth
            log.info("%s: %d/%d", self.stage, done, total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Progress:
    """One StageProgress per stage: ``with progress.stage("splitting") as p: split(progress=p)``."""

    def __init__(self, *, bar: bool):
        self.bar = bar

    def stage(self, name: str) -> _Stage:
        return _Stage(StageProgress(name, bar=self.bar))


class _Stage:
    def __init__(self, progress: StageProgress):
        self.progress = progress

    def __enter__(self) -> StageProgress:
        return self.progress

    def __exit__(self, *exc) -> None:
        self.progress.close()
