"""MQTT over WebSocket with paho-mqtt (transport="websockets", path /mqtt): the ws and wss
listeners of issue 4, checked against a TCP client, and the upgrade without the ``mqtt``
subprotocol refused with HTTP 400.

These need iothub's own listeners, so they are skipped against an external broker.
"""

from __future__ import annotations

import queue
import socket
import ssl
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

import harness

pytestmark = pytest.mark.usefixtures("iothub_only")

WAIT_S = 5.0


class WsHub:
    def __init__(self, hub: harness.Hub, listeners: dict[str, tuple[str, int]], workdir: Path):
        self.hub = hub
        self.listeners = listeners
        self.ca = workdir / "iothub-data" / "tls" / "ca.crt"


@pytest.fixture
def ws_hub(request: pytest.FixtureRequest, iothub_binary, tmp_path_factory) -> WsHub:
    """A hub with mqtt, ws and wss listeners on port 0; their addresses from the log."""
    config = harness.default_config()
    anonymous = {"bind": "127.0.0.1:0", "anonymous_hub": "default"}
    config["listeners"]["ws"] = [{"name": "ws", **anonymous}]
    config["listeners"]["wss"] = [{"name": "wss", **anonymous}]
    workdir = tmp_path_factory.mktemp("iothub")
    hub = harness.start_hub(iothub_binary, config, workdir)
    request.node._iothub_hubs = [hub]
    listeners = {}
    for match in harness.LISTENING.finditer(hub.logs()):
        host, _, port = match.group(2).rpartition(":")
        listeners[match.group(1)] = (host, int(port))
    assert {"ws", "wss"} <= listeners.keys(), hub.logs()
    yield WsHub(hub, listeners, workdir)
    hub.stop()


class Client:
    """A paho client on its own network thread; messages land in a queue."""

    def __init__(self, addr: tuple[str, int], transport: str, version: int, ca: Path | None = None):
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.reason = None
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"py{uuid.uuid4().hex[:16]}",
            protocol=version,
            transport=transport,
            reconnect_on_failure=False,
        )
        if transport == "websockets":
            self.client.ws_set_options(path="/mqtt")
        if ca is not None:
            # Verifies the chain and the host name (127.0.0.1 is in the certificate's SANs).
            self.client.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda *_args: self.subscribed.set()
        self.client.connect(addr[0], addr[1], keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(WAIT_S), "no CONNACK"
        assert not self.reason.is_failure, f"refused: {self.reason}"

    def _on_connect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        self.reason = reason_code
        self.connected.set()

    def subscribe(self, topic: str, qos: int) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos)
        assert self.subscribed.wait(WAIT_S), "no SUBACK"

    def expect(self) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=WAIT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize("version", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def test_paho_over_websocket_talks_to_tcp_clients(ws_hub: WsHub, version: int) -> None:
    """paho over WebSocket and over TCP exchange QoS 1 messages both ways."""
    topic = f"py/{uuid.uuid4().hex}/ws"
    over_ws = Client(ws_hub.listeners["ws"], "websockets", version)
    over_tcp = Client(ws_hub.hub.mqtt_addr, "tcp", version)
    over_ws.subscribe(topic, 1)
    over_tcp.subscribe(topic, 1)
    over_tcp.client.publish(topic, b"from tcp", qos=1).wait_for_publish(WAIT_S)
    over_ws.client.publish(topic, b"from ws", qos=1).wait_for_publish(WAIT_S)
    for client in (over_ws, over_tcp):
        got = sorted(client.expect().payload for _ in range(2))
        assert got == [b"from tcp", b"from ws"]
    over_ws.close()
    over_tcp.close()


def test_paho_over_wss_verifies_the_server(ws_hub: WsHub) -> None:
    """paho over wss verifies the generated server certificate (CA under data_dir/tls)."""
    topic = f"py/{uuid.uuid4().hex}/wss"
    secure = Client(ws_hub.listeners["wss"], "websockets", mqtt.MQTTv5, ca=ws_hub.ca)
    plain = Client(ws_hub.listeners["ws"], "websockets", mqtt.MQTTv311)
    secure.subscribe(topic, 1)
    plain.client.publish(topic, b"to wss", qos=1).wait_for_publish(WAIT_S)
    assert secure.expect().payload == b"to wss"
    secure.close()
    plain.close()


@pytest.mark.parametrize(
    ("protocols", "status"),
    [(None, 400), ("mqttv3.1", 400), ("wamp, mqtt", 101)],
    ids=["none", "other", "among-others"],
)
def test_upgrade_needs_the_mqtt_subprotocol(ws_hub: WsHub, protocols: str | None, status: int) -> None:
    """[v3 MQTT-6.0.0-4] [v5 MQTT-6.0.0-4] The server selects "mqtt"; without it offered, 400."""
    host, port = ws_hub.listeners["ws"]
    request = (
        f"GET /mqtt HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    )
    if protocols is not None:
        request += f"Sec-WebSocket-Protocol: {protocols}\r\n"
    with socket.create_connection((host, port), timeout=WAIT_S) as s:
        s.sendall((request + "\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(4096)
            assert chunk, f"closed before an answer: {answer!r}"
            answer += chunk
    status_line, _, _ = answer.partition(b"\r\n")
    assert status_line.split()[1] == str(status).encode(), answer
    if status == 400:
        assert b'subprotocol "mqtt"' in answer, answer
    else:
        assert b"sec-websocket-protocol: mqtt" in answer.lower(), answer
    # The listener keeps serving paho afterwards.
    Client(ws_hub.listeners["ws"], "websockets", mqtt.MQTTv311).close()
