"""Wall time and peak RSS of one command, each in a fresh wrapper process.

``ru_maxrss`` of ``RUSAGE_CHILDREN`` is the maximum over every child a process has waited for, so
measuring several commands from one process would report the largest so far. A fresh
``python -c`` wrapper per command has exactly one child: its own maximum is that command's peak.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

WRAPPER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # ru_maxrss: KiB on Linux
print(json.dumps({"rc": done.returncode, "wall": wall, "rss": usage.ru_maxrss * 1024,
                  "cpu": usage.ru_utime + usage.ru_stime, "stderr": done.stderr[-3000:]}))
"""


@dataclass(frozen=True)
class Sample:
    wall: float
    """Seconds, measured around the child alone."""
    rss: int
    """Peak resident set of the child, bytes."""
    cpu: float = 0.0
    """User + system seconds of the child, all its threads: on a shared machine a steadier
    measure of work than wall time, which waits for the cores other jobs hold."""


class CommandFailed(RuntimeError):
    pass


def measure(command: list[str], env: dict[str, str] | None = None) -> Sample:
    """Run ``command`` once under a fresh wrapper; raise CommandFailed with its stderr tail."""
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, *command], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise CommandFailed(done.stderr[-3000:])
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if report["rc"] != 0:
        raise CommandFailed(f"{' '.join(command)} exited {report['rc']}:\n{report['stderr']}")
    return Sample(wall=report["wall"], rss=report["rss"], cpu=report["cpu"])
