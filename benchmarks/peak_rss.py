"""Run a command and report its peak resident memory (RSS) and wall time.

    python benchmarks/peak_rss.py [--json FILE] -- COMMAND [ARGS...]

e.g. `python benchmarks/peak_rss.py -- python train_sft.py ...`. The peak is the kernel's `ru_maxrss` of the
command's process as returned by `wait4`: the largest RSS the command reached, or, when it started children and
waited for them, the largest of any single process in that tree (not their sum). The command's exit status is
passed through. Same number as `/usr/bin/time -v` ("Maximum resident set size") where that tool is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def run_with_peak_rss(command: list[str]) -> dict:
    """Run `command` to completion; return its exit status, wall seconds and peak RSS in MiB."""
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return {
        "command": command,
        "exit_status": process.returncode,
        "wall_seconds": round(time.perf_counter() - start, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux reports kilobytes
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the result to this JSON file")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --")
    result = run_with_peak_rss(command)
    print(
        f"peak RSS {result['peak_rss_mib']} MiB, wall {result['wall_seconds']} s, exit status {result['exit_status']}: {' '.join(command)}",
        file=sys.stderr,
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    return result["exit_status"]


if __name__ == "__main__":
    sys.exit(main())
