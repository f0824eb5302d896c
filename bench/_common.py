"""Shared by the benchmarks: cached synthetic inputs, timed subprocesses, the RESULT line."""
from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
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


def detached_child() -> None:
    """In a server's process, before exec: its own process group (stopped as one), and a SIGTERM
    when the benchmark dies, however it dies (Linux's PR_SET_PDEATHSIG)."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


class ServedProcess:
    """A server command on 127.0.0.1:port in its own process group, its output in a file; started
    when it answers GET / with a 200, stopped as a group (SIGTERM, then SIGKILL)."""

    def __init__(self, command: list[str], port: int, env: dict[str, str], start_timeout: float, cwd: Path | None = None):
        self.command, self.port = command, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=detached_child)
        self._wait(start_timeout)

    def _wait(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}):\n{self.output()[-3000:]}")
            try:
                if httpx.get(self.url + "/", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the server did not answer within {timeout:.0f}s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def close(self) -> None:
        """Stop it, print its tracebacks (the last 4,000 characters of its output) if it had any,
        and drop its output file."""
        self.stop()
        output = self.output()
        if "Traceback" in output:
            print("\n# server log (tracebacks; last 4,000 characters):\n" + output[-4000:])
        self.log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)


def random_clip_checkpoint(model_name: str, seed: int):
    """A random-weights open_clip model of the real architecture (open_clip's own config,
    pretrained=None, torch seed `seed`) saved as a checkpoint folder, open_clip_config.json +
    open_clip_model.safetensors, loadable as local-dir:PATH: bench/cache/clip-<model>-random-<seed>/.
    Returns (folder, what was done)."""
    import json
    import shutil

    folder = CACHE / f"clip-{model_name}-random-{seed}"
    weights = folder / "open_clip_model.safetensors"
    if weights.exists():
        return folder, f"cached ({weights.stat().st_size / 1e9:.2f} GB)"
    import open_clip
    import torch
    from safetensors.torch import save_file

    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    torch.manual_seed(seed)
    model = open_clip.create_model(model_name, pretrained=None)
    (partial / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": open_clip.get_model_config(model_name),
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(partial / "open_clip_model.safetensors"))
    del model
    partial.rename(folder)
    return folder, f"built ({weights.stat().st_size / 1e9:.2f} GB)"
