"""Run the test suite one module per pytest process, then print one summary (``make test``).

The modules load ONNX Runtime, OpenVINO, torch, GDAL, Dask and the native tiler loops, each with
its own thread pools and global state. In one process that accumulates over hundreds of tests,
and full single-process runs sometimes died by SIGSEGV at a random point past half the suite
(4 runs of 5 one day, 1 of 2 another; no Python frame shown, root cause not found; never in a
module run on its own, 6 of 6 repeats of the tiler modules). A process per module keeps each
module's runtimes to itself, and a crash names its module.

    python tests/run_modules.py [pytest options...]
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
COUNTS = re.compile(r"(\d+) (passed|failed|skipped|error|errors|xfailed|xpassed|deselected)")


def main(options: list[str]) -> int:
    totals: dict[str, int] = {}
    broken: list[str] = []
    start = time.perf_counter()
    for module in sorted(TESTS.glob("test_*.py")):
        name = module.relative_to(TESTS.parent)
        print(f"== {name}", flush=True)
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(name),
                               *options], cwd=TESTS.parent, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        print(proc.stdout, end="", flush=True)
        summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        for count, kind in COUNTS.findall(summary):
            kind = "errors" if kind == "error" else kind
            totals[kind] = totals.get(kind, 0) + int(count)
        if proc.returncode < 0:
            broken.append(f"{name}: killed by {signal.Signals(-proc.returncode).name}")
        elif proc.returncode not in (0, 5):  # 5: nothing collected (all deselected)
            broken.append(f"{name}: pytest exit {proc.returncode}")
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(totals.items()))
    print(f"== all modules: {counts} in {time.perf_counter() - start:.0f} s")
    for line in broken:
        print(f"FAILED {line}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
