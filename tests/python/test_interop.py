"""Interoperability: MQTT 5 and 3.1.1 clients talking through the hub, and the
Mosquitto command line clients (Debian mosquitto-clients) talking to paho.
"""

from __future__ import annotations

import shutil
import subprocess
import threading

import pytest

from clients import EXPECT_S, V5, V311

MOSQUITTO_PUB = shutil.which("mosquitto_pub")
MOSQUITTO_SUB = shutil.which("mosquitto_sub")
STDBUF = [shutil.which("stdbuf") or "stdbuf", "-oL"]



@pytest.fixture
def mosquitto_clients():
    """A missing tool fails the test (scripts/test installs it); it never skips silently."""
    assert MOSQUITTO_PUB and MOSQUITTO_SUB, "mosquitto-clients not installed (apt-get install mosquitto-clients)"


needs_mosquitto_clients = pytest.mark.usefixtures("mosquitto_clients")


def test_v5_publisher_to_v311_subscriber(hub, peer, ns):
    """[v3 MQTT-4.5.0-1] [v5 MQTT-4.5.0-1] properties are dropped, payload/QoS/retain kept."""
    topic = f"{ns}/v5-to-v3"
    old = peer(hub, "old", version=V311)
    old.subscribe(topic, qos=2)
    new = peer(hub, "new", version=V5)
    new.publish(topic, b"\x00binary\xff", qos=2, props={"UserProperty": [("k", "v")], "ContentType": "x/y"})
    new.publish(topic, b"retained", qos=1, retain=True)
    # paho hands a QoS 2 message to the application only at PUBREL, so compare as a set.
    got = {(m.payload, m.qos, m.retain) for m in old.expect_n(2)}
    assert got == {(b"\x00binary\xff", 2, False), (b"retained", 1, False)}
    late = peer(hub, "late", version=V311)
    late.subscribe(topic, qos=1)
    msg = late.expect(topic=topic)
    assert (msg.payload, msg.retain) == (b"retained", True)


def test_v311_publisher_to_v5_subscriber(hub, peer, ns):
    """[v3 MQTT-4.5.0-1] [v5 MQTT-4.5.0-1] a 3.1.1 message arrives at a v5 client without properties."""
    topic = f"{ns}/v3-to-v5"
    new = peer(hub, "new", version=V5)
    new.subscribe(topic, qos=2, sub_id=42)
    old = peer(hub, "old", version=V311)
    for qos in (0, 1, 2):
        old.publish(topic, b"q%d" % qos, qos=qos)
    got = new.expect_n(3)
    assert [(m.payload, m.qos) for m in got] == [(b"q0", 0), (b"q1", 1), (b"q2", 2)]
    assert all(m.user_properties == [] and m.content_type is None for m in got)
    assert all(m.subscription_identifiers == [42] for m in got)


class MosquittoSub:
    """mosquitto_sub in the background; message lines are "<topic>|<payload>"."""

    def __init__(self, hub, topic: str, count: int, version: str) -> None:
        host, port = hub.mqtt_addr
        # stdbuf: mosquitto_sub block-buffers a pipe, and we must see "SUBACK" before publishing.
        cmd = [*STDBUF, MOSQUITTO_SUB, "-h", host, "-p", str(port), "-t", topic, "-q", "1", "-C", str(count),
               "-W", "20", "-V", version, "-F", "%t|%p", "-d"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.subscribed = threading.Event()
        self.lines: list[str] = []
        self.messages: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if line.startswith("Client ") or line.startswith("Subscribed"):
                if "SUBACK" in line:
                    self.subscribed.set()
            else:
                self.messages.append(line)

    def wait(self) -> list[str]:
        self.proc.wait(timeout=30)
        # The process may exit before the reader thread has taken its last lines from the pipe.
        self.reader.join(timeout=10)
        return self.messages


@needs_mosquitto_clients
@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_paho_publisher_to_mosquitto_sub(hub, peer, ns, version):
    """Paho publishes, mosquitto_sub (3.1.1 and 5) prints what it received."""
    topic = f"{ns}/to-mosquitto"
    sub = MosquittoSub(hub, topic, 2, version)
    assert sub.subscribed.wait(EXPECT_S), f"mosquitto_sub did not subscribe: {sub.lines}"
    pub = peer(hub, "pub", version=V5 if version == "mqttv5" else V311)
    pub.publish(topic, b"hello", qos=1)
    pub.publish(topic, "wörld".encode(), qos=0)
    assert sub.wait() == [f"{topic}|hello", f"{topic}|wörld"], sub.lines
    assert sub.proc.returncode == 0


@needs_mosquitto_clients
@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_mosquitto_pub_to_paho_subscriber(hub, peer, ns, version):
    """mosquitto_pub (3.1.1 and 5, QoS 0/1/2, retained) to a paho subscriber."""
    topic = f"{ns}/from-mosquitto"
    sub = peer(hub, "sub", version=V5 if version == "mqttv5" else V311)
    sub.subscribe(topic, qos=2)
    host, port = hub.mqtt_addr
    for qos in ("0", "1", "2"):
        cmd = [MOSQUITTO_PUB, "-h", host, "-p", str(port), "-t", topic, "-m", f"m{qos}", "-q", qos, "-V", version]
        if version == "mqttv5":
            cmd += ["-D", "publish", "user-property", "origin", "mosquitto_pub"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
    got = sub.expect_n(3)
    assert [(m.payload, m.qos) for m in got] == [(b"m0", 0), (b"m1", 1), (b"m2", 2)]
    if version == "mqttv5":
        assert all(m.user_properties == [("origin", "mosquitto_pub")] for m in got)
    retained = [MOSQUITTO_PUB, "-h", host, "-p", str(port), "-t", topic, "-m", "kept", "-r", "-q", "1", "-V", version]
    assert subprocess.run(retained, capture_output=True, timeout=30).returncode == 0
    assert sub.expect(topic=topic).payload == b"kept"
    late = peer(hub, "late", version=V311)
    late.subscribe(topic, qos=1)
    msg = late.expect(topic=topic)
    assert (msg.payload, msg.retain) == (b"kept", True)
