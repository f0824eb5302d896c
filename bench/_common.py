"""Shared by the benchmarks: cached synthetic inputs, timed subprocesses, the RESULT line."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
CACHE = BENCH_DIR / "cache"
BIN = Path(sys.executable).parent


def synthetic(kind: str, rows: int, seed: int = 1) -> Path:
    """bench/cache/<kind>-<rows>-<seed>-g<generator version>.parquet, written by `spellbook synth`
    once and reused until the generator changes."""
    from spellbook.ingest.synth import GENERATOR_VERSION

    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"{kind}-{rows}-{seed}-g{GENERATOR_VERSION.rsplit('/', 1)[-1]}.parquet"
    if not path.exists():
        partial = path.with_suffix(".partial")
        started = time.perf_counter()
        subprocess.run([str(BIN / "spellbook"), "synth", kind, str(partial), "--rows", str(rows), "--seed", str(seed)], check=True)
        partial.rename(path)
        print(f"# synthesised {path.name} in {time.perf_counter() - started:.1f}s", flush=True)
    return path


def timed(command: list[str], **kwargs) -> tuple[float, float, str]:
    """Run a command; return (seconds, peak RSS in MB of that process, its output)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{output}")
    return seconds, usage.ru_maxrss / 1024, output


def database_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values):
    return statistics.median(values) if values else float("nan")


def result_line(**figures) -> str:
    parts = []
    for name, value in figures.items():
        parts.append(f"{name}={value:.3f}" if isinstance(value, float) else f"{name}={value}")
    return "RESULT " + " ".join(parts)


def reset_peak_rss(pid: int | str = "self") -> None:
    """Reset a process's peak RSS (VmHWM) to its RSS now, so that the next peak_rss_mb() is the peak
    of what ran since (Linux: /proc/PID/clear_refs; a no-op where it cannot be written)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """(peak RSS since start or the last reset_peak_rss, RSS now) of a process, in MB."""
    hwm = rss = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    except OSError:
        pass
    return hwm / 1024, rss / 1024


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
