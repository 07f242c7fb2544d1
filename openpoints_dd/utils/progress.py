"""Progress bars only where someone watches them."""
from __future__ import annotations


def bar_disabled(progress: bool) -> bool | None:
    """tqdm's `disable` for a `progress: true|false` setting: off when false, and with true shown only on a
    terminal (tqdm's None), so a run logged to a file or nohup keeps a readable log instead of bar redraws."""
    return None if progress else True
