"""Progress bars only where someone watches them."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator


def bar_disabled(progress: bool) -> bool | None:
    """tqdm's `disable` for a `progress: true|false` setting: off when false, and with true shown only on a
    terminal (tqdm's None), so a run logged to a file or nohup keeps a readable log instead of bar redraws."""
    return None if progress else True


@contextmanager
def tqdm_safe_logging(enabled: bool) -> Iterator[None]:
    """Route console log lines through tqdm while a bar is shown, so the bar is not torn."""
    if not enabled:
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm
    with logging_redirect_tqdm(loggers=[logging.getLogger()]):
        yield
