"""Start a command, SIGKILL it once a condition holds: the fault-injection tests' one primitive."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable


def kill_when(cmd: list[str], ready: Callable[[], bool], env: dict[str, str], *, delay: float = 0.0,
              tree: bool = False, timeout: float = 600) -> bool:
    """Run ``cmd`` until ``ready()`` (then ``delay`` s more) and SIGKILL it; True if the kill landed.

    ``tree`` also kills every descendant (torchrun's workers live in their own sessions). A
    process that finished before the kill must have exited 0.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + timeout
    while proc.poll() is None and not ready():
        assert time.time() < deadline, f"timed out waiting to kill {cmd[:6]}"
        time.sleep(0.01)
    time.sleep(delay)
    landed = proc.poll() is None
    if landed:
        victims = []
        if tree:
            import psutil

            victims = psutil.Process(proc.pid).children(recursive=True)
        for victim in victims:
            with contextlib.suppress(Exception):  # already gone
                victim.send_signal(signal.SIGKILL)
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert landed or proc.returncode == 0, proc.stderr.read().decode()[-2000:]
    return landed
