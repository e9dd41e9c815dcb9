"""Metrics (issue 5) with paho-mqtt as the device: the metrics API counts every MQTT packet of a
device in either direction as one message (MQTT 3.1.1 and 5), its answers validate against the
schemas of ``control/openapi.json`` (with openapi-schema-validator, not iothub's checker), and
``/metrics`` is well-formed Prometheus text with the process and per-hub series.

These need iothub's own API, so they are skipped against an external broker.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from openapi_schema_validator import OAS30Validator, validate

import harness

pytestmark = pytest.mark.usefixtures("iothub_only")

WAIT_S = 5.0
COLLECT_WAIT_S = 30.0
REGION_PATH = "/iot/v1/regions/fr-par"
DOCUMENT = json.loads((Path(__file__).parents[2] / "control" / "openapi.json").read_text())


class RegistryHub:
    """A hub whose MQTT listener admits registered devices only, and its API as admin."""

    def __init__(self, hub: harness.Hub, workdir: Path):
        self.hub = hub
        self.key = (workdir / "iothub-data" / "admin-api-key").read_text().strip()

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
        host, port = self.hub.api_addr
        url = path if path.startswith("/") else f"{REGION_PATH}/{path}"
        request = urllib.request.Request(
            f"http://{host}:{port}{url}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"X-Auth-Token": self.key, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=WAIT_S) as response:
                text, status = response.read().decode(), response.status
        except urllib.error.HTTPError as err:
            text, status = err.read().decode(), err.code
        return status, (json.loads(text) if text.startswith(("{", "[")) else text)

    def ok(self, method: str, path: str, body: dict | None = None):
        status, answer = self.call(method, path, body)
        assert 200 <= status < 300, f"{method} {path}: {status} {answer}"
        return answer


@pytest.fixture
def registry_hub(request: pytest.FixtureRequest, iothub_binary, tmp_path_factory) -> RegistryHub:
    config = harness.default_config()
    config["listeners"] = {"mqtt": [{"name": "mqtt", "bind": "127.0.0.1:0"}]}
    workdir = tmp_path_factory.mktemp("iothub")
    hub = harness.start_hub(iothub_binary, config, workdir)
    request.node._iothub_hubs = [hub]
    yield RegistryHub(hub, workdir)
    hub.stop()


def schema_of(name: str) -> dict:
    """A component schema, its ``$ref``s resolved against the document."""
    return {"$ref": f"#/components/schemas/{name}", "components": DOCUMENT["components"]}


def sums(answer: dict) -> dict[str, int]:
    return {s["name"]: sum(p[1] for p in s["points"]) for s in answer["metrics"]}


def wait_for_sums(api: RegistryHub, path: str, want: dict[str, int]) -> dict:
    """Polls ``path`` until its series sum to ``want`` (the hub collects every 5 s)."""
    deadline = time.monotonic() + COLLECT_WAIT_S
    while True:
        answer = api.ok("GET", path)
        if sums(answer) == want:
            return answer
        assert time.monotonic() < deadline, f"{path}: want {want}, got {sums(answer)}: {answer}"
        time.sleep(0.25)


def device_session(hub: harness.Hub, device_id: str, version: int, publishes: int) -> int:
    """A paho device publishes ``publishes`` QoS 1 messages, then disconnects. Answers the
    packets exchanged: CONNECT, CONNACK, each PUBLISH and its PUBACK, DISCONNECT (the keep
    alive of 60 s sends no PINGREQ in a test this short)."""
    connected = threading.Event()
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=device_id,
        protocol=version,
        reconnect_on_failure=False,
    )
    client.on_connect = lambda *_args: connected.set()
    client.connect(*hub.mqtt_addr, keepalive=60)
    client.loop_start()
    try:
        assert connected.wait(WAIT_S), "no CONNACK"
        for i in range(publishes):
            info = client.publish("t/x", f"m{i}".encode(), qos=1)
            info.wait_for_publish(WAIT_S)
            assert info.is_published(), f"message {i} not acknowledged"
    finally:
        client.disconnect()
        client.loop_stop()
    return 2 + 2 * publishes + 1


@pytest.mark.parametrize("version", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def test_every_packet_is_a_message_of_its_hub_and_device(registry_hub: RegistryHub, version: int):
    """Issue 5: every MQTT packet in either direction counts as one message, for the hub and
    for the device; the answers have the documented shape."""
    hub_id = registry_hub.ok("POST", "hubs", {"name": f"h{version}"})["id"]
    devices = [
        registry_hub.ok(
            "POST", "devices", {"hub_id": hub_id, "name": f"d{i}", "allow_insecure": True}
        )["device"]["id"]
        for i in range(2)
    ]
    first = device_session(registry_hub.hub, devices[0], version, 4)
    second = device_session(registry_hub.hub, devices[1], version, 2)
    # A year by month: each device is active in one interval whatever boundary the test crosses.
    hub_answer = wait_for_sums(
        registry_hub,
        f"hubs/{hub_id}/metrics?period=year",
        {"messages": first + second, "active_devices": 2},
    )
    device_answer = wait_for_sums(
        registry_hub,
        f"devices/{devices[0]}/metrics?period=year",
        {"messages": first, "activity": 1},
    )
    for answer in (hub_answer, device_answer):
        validate(answer, schema_of("MetricsResponse"), cls=OAS30Validator)
        for series in answer["metrics"]:
            assert len(series["points"]) == 12, series
            assert series["metadata"] == {"period": "year", "resolution": "month"}
            times = [p[0] for p in series["points"]]
            assert times == sorted(set(times)), "oldest first, one point per month"
            assert all(t.endswith("T00:00:00.000000Z") and t[8:10] == "01" for t in times), times
    by_minute = registry_hub.ok("GET", f"hubs/{hub_id}/metrics")
    assert by_minute["metrics"][0]["metadata"]["resolution"] == "minute"
    assert len(by_minute["metrics"][0]["points"]) == 60
    assert sums(by_minute)["messages"] == first + second


def test_bad_metrics_queries_name_the_parameter(registry_hub: RegistryHub):
    hub_id = registry_hub.ok("POST", "hubs", {"name": "h"})["id"]
    for query, field in [
        ("period=fortnight", "period"),
        ("start_date=2024-13-01T00:00:00Z", "start_date"),
        ("start_date=2999-01-01T00:00:00Z", "start_date"),
        ("periods=day", "periods"),
    ]:
        status, answer = registry_hub.call("GET", f"hubs/{hub_id}/metrics?{query}")
        assert status == 400, (query, answer)
        validate(answer, schema_of("Error"), cls=OAS30Validator)
        assert [d.get("argument_name") for d in answer["details"]] == [field], answer


SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>[^}]*)\})? (?P<value>\S+)$'
)
LABEL = re.compile(r'^[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"$')


def test_metrics_is_prometheus_text_with_process_and_hub_series(registry_hub: RegistryHub):
    """``/metrics``: every line a comment, a ``# TYPE`` of a known type or a sample with valid
    labels and a number; the process series and the per-hub traffic after a device's session."""
    hub_id = registry_hub.ok("POST", "hubs", {"name": "h"})["id"]
    device = registry_hub.ok(
        "POST", "devices", {"hub_id": hub_id, "name": "d", "allow_insecure": True}
    )["device"]["id"]
    packets = device_session(registry_hub.hub, device, mqtt.MQTTv5, 3)
    # The session's last packet (its DISCONNECT) is counted when the hub reads it, which may
    # be just after the client has closed: scrape until it is in (or the deadline says not).
    deadline = time.monotonic() + 10
    while True:
        status, text = registry_hub.call("GET", "/metrics")
        assert status == 200
        counted = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(("iothub_hub_packets_received_total{", "iothub_hub_packets_sent_total{"))
            and f'hub="{hub_id}"' in line
        )
        if counted >= packets or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    samples: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("# HELP"):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in {"counter", "gauge", "histogram", "summary", "untyped"}, line
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        labels = match.group("labels") or ""
        for pair in filter(None, re.split(r',(?=[a-zA-Z_])', labels)):
            assert LABEL.match(pair), f"bad label {pair!r} in {line!r}"
        samples.setdefault(match.group("name"), []).append((labels, float(match.group("value"))))
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_threads",
        "process_start_time_seconds",
    ]:
        assert name in samples and samples[name][0][1] > 0, name
    of_hub = lambda name: sum(v for labels, v in samples.get(name, []) if f'hub="{hub_id}"' in labels)
    assert of_hub("iothub_hub_packets_received_total") + of_hub(
        "iothub_hub_packets_sent_total"
    ) == packets
    assert of_hub("iothub_budget_limit_bytes") == 146800640
    # Bounded labels: no series names a device or a client.
    assert device not in text
