"""Process-wide console settings: whether long work shows progress bars.

``medbench -q`` turns bars off for everything the command runs, including code that is not handed
a ``progress`` flag (training loops inside a tuning method, weak labelling, transformers' weight
loading) — the same switch as ``transformers.utils.logging.disable_progress_bar()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_ENABLED = [True]


def progress_bars_enabled() -> bool:
    return _ENABLED[0]


@contextlib.contextmanager
def progress_bars_disabled() -> Iterator[None]:
    """No progress bars from medbench or transformers inside the block; the previous state after it."""
    from transformers.utils import logging as hf_logging

    ours, theirs = _ENABLED[0], hf_logging.is_progress_bar_enabled()
    _ENABLED[0] = False
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        _ENABLED[0] = ours
        if theirs:
            hf_logging.enable_progress_bar()
