"""Starts and stops the iothub binary for the Python end-to-end tests.

Every test gets its own hub process on 127.0.0.1 port 0, so tests never share
retained messages, sessions or subscriptions, and never touch 1883 (Mosquitto
owns it on the development machines).

With ``IOTHUB_TEST_EXTERNAL_BROKER=host:port`` the tests run against an already
running broker instead (used to validate the tests themselves against Mosquitto
while iothub was being written). Only tests that need iothub-specific config or
the iothub HTTP API are skipped in that mode.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

LISTENING = re.compile(r"listening listener=(\S+) addr=(\S+)")
REPO_ROOT = Path(__file__).resolve().parents[2]
EXTERNAL_ENV = "IOTHUB_TEST_EXTERNAL_BROKER"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class HarnessError(RuntimeError):
    """The hub could not be found or started; the message says what to do."""


def external_broker() -> tuple[str, int] | None:
    """The broker named by IOTHUB_TEST_EXTERNAL_BROKER, or None in normal mode."""
    value = os.environ.get(EXTERNAL_ENV, "").strip()
    if not value:
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise HarnessError(f"{EXTERNAL_ENV} must look like 127.0.0.1:1883, got {value!r}")
    return host, int(port)


def find_binary() -> Path:
    """IOTHUB_BIN, else $CARGO_TARGET_DIR/debug/iothub, else <repo>/target/debug/iothub."""
    candidates: list[Path] = []
    if os.environ.get("IOTHUB_BIN"):
        candidates.append(Path(os.environ["IOTHUB_BIN"]))
    else:
        if os.environ.get("CARGO_TARGET_DIR"):
            candidates.append(Path(os.environ["CARGO_TARGET_DIR"]) / "debug" / "iothub")
        candidates.append(REPO_ROOT / "target" / "debug" / "iothub")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise HarnessError(
        f"iothub binary not found (tried {tried}). Build it with `cargo build -p iothub`, "
        f"set IOTHUB_BIN to its path, or set {EXTERNAL_ENV}=127.0.0.1:1883 to run against another broker."
    )


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------


def default_config() -> dict:
    """The config every test starts from: one anonymous dev hub, both listeners on port 0."""
    return {
        "listeners": {"mqtt": [{"name": "mqtt", "bind": "127.0.0.1:0", "anonymous_hub": "default"}]},
        "api": {"bind": "127.0.0.1:0"},
        "hubs": [{"name": "default", "plan": "plan_dedicated", "allow_anonymous": True}],
    }


def merge(base: dict, override: dict) -> dict:
    """Deep-merges ``override`` into a copy of ``base`` (dicts merge, anything else replaces)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def build_config(mqtt: dict | None = None, limits: dict | None = None, hub: dict | None = None) -> dict:
    """Default config with ``mqtt:`` settings, hub ``limits:`` and other hub fields overridden."""
    config = default_config()
    if mqtt:
        config["mqtt"] = dict(mqtt)
    first_hub = dict(config["hubs"][0])
    if hub:
        first_hub = merge(first_hub, hub)
    if limits:
        first_hub["limits"] = merge(first_hub.get("limits", {}), limits)
    config["hubs"] = [first_hub]
    return config


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    # Quote everything that is not a plain word, so ':' in addresses stays a string.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_yaml(value: object, indent: int = 0) -> str:
    """Block-style YAML for nested dicts/lists of scalars (all the config needs)."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:")
                lines.append(to_yaml(item, indent + 1))
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                body = to_yaml(item, indent + 1).splitlines()
                first = body[0].lstrip()
                lines.append(f"{pad}- {first}")
                lines.extend(body[1:])
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    else:
        lines.append(f"{pad}{_scalar(value)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Process
# ---------------------------------------------------------------------------


def _split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class Hub:
    """A running broker: where its MQTT listener and (for iothub) its HTTP API listen."""

    mqtt_host: str
    mqtt_port: int
    api_addr: tuple[str, int] | None = None
    external: bool = False
    process: subprocess.Popen | None = None
    _log_lines: list[str] = field(default_factory=list)
    _log_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def mqtt_addr(self) -> tuple[str, int]:
        return self.mqtt_host, self.mqtt_port

    def logs(self) -> str:
        """Everything the hub wrote to stderr so far."""
        with self._log_lock:
            return "".join(self._log_lines)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
        return proc.returncode


def start_hub(binary: Path, config: dict, workdir: Path) -> Hub:
    """Writes ``config`` to ``workdir``, spawns ``iothub serve`` and waits for both listeners."""
    config_path = workdir / "iothub.yaml"
    config_path.write_text(to_yaml(config) + "\n", encoding="utf-8")
    cmd = [
        str(binary),
        "serve",
        "--config",
        str(config_path),
        "--mqtt-addr",
        "127.0.0.1:0",
        "--api-addr",
        "127.0.0.1:0",
    ]
    env = dict(os.environ)
    env.setdefault("NO_COLOR", "1")
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=workdir,
        env=env,
    )
    hub = Hub(mqtt_host="", mqtt_port=0, process=proc)
    listeners: dict[str, str] = {}
    ready = threading.Event()

    def drain() -> None:
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            with hub._log_lock:
                hub._log_lines.append(line)
            match = LISTENING.search(line)
            if match:
                listeners[match.group(1)] = match.group(2)
                if "mqtt" in listeners and "api" in listeners:
                    ready.set()
        ready.set()  # EOF: the process is gone; let the waiter look at why.

    threading.Thread(target=drain, name="iothub-stderr", daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready.wait(0.05):
        if time.monotonic() > deadline:
            break
    if "mqtt" not in listeners or "api" not in listeners:
        code = proc.poll()
        hub.stop()
        raise HarnessError(
            f"iothub did not report its mqtt and api listeners within {START_TIMEOUT_S:.0f}s "
            f"(exit code {code}); command: {' '.join(cmd)}\nconfig:\n{config_path.read_text()}\n"
            f"stderr:\n{hub.logs()}"
        )
    hub.mqtt_host, hub.mqtt_port = _split_addr(listeners["mqtt"])
    hub.api_addr = _split_addr(listeners["api"])
    return hub
