"""Process-wide console settings: whether long work shows progress bars.

``medbench -q`` turns bars off for everything the command runs, including code that is not handed
a ``progress`` flag (training loops inside a tuning method, transformers' weight loading) — the
same switch as ``transformers.utils.logging.disable_progress_bar()``.
"""

from __future__ import annotations

_ENABLED = [True]


def disable_progress_bars() -> None:
    """No progress bars from medbench or transformers in this process."""
    _ENABLED[0] = False
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def progress_bars_enabled() -> bool:
    return _ENABLED[0]
