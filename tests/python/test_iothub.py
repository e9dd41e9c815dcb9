"""iothub's own contract (docs/ and the hub-interface): config-driven CONNACK values,
queue policy and its metric, slow consumers, graceful shutdown, the HTTP API.

These need iothub itself, so they are skipped against an external broker.
"""

from __future__ import annotations

import re
import signal
import urllib.request

import pytest

import raw
from clients import V5, V311

pytestmark = pytest.mark.usefixtures("iothub_only")


def _get(hub, path: str) -> tuple[int, str]:
    host, port = hub.api_addr
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as response:
        return response.status, response.read().decode("utf-8")


def _dropped(metrics: str, reason: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("iothub_messages_dropped_total") and f'reason="{reason}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_healthz_and_metrics_answer(hub):
    status, body = _get(hub, "/healthz")
    assert (status, body.strip()) == (200, "ok")
    status, body = _get(hub, "/metrics")
    assert status == 200
    assert re.search(r"^# (TYPE|HELP) ", body, re.M) or body.strip() == "", "Prometheus text format"


def test_connack_announces_configured_limits(hub_with):
    """[v5 MQTT-3.2.2-9] (Maximum QoS only when < 2) and the CONNACK properties taken from config."""
    hub = hub_with(
        mqtt={"max_packet_size": 2048},
        limits={"receive_maximum": 7, "topic_alias_maximum": 5, "max_session_expiry_secs": 30},
    )
    client, connack = raw.open_session(hub.mqtt_addr, "limits", version=5, props=[(raw.SESSION_EXPIRY, 3600)])
    assert connack["code"] == 0
    props = connack["props"]
    assert props.get(raw.RECEIVE_MAXIMUM) == [7]
    assert props.get(raw.TOPIC_ALIAS_MAXIMUM) == [5]
    assert props.get(raw.MAXIMUM_PACKET_SIZE) == [2048]
    assert props.get(raw.SESSION_EXPIRY) == [30], "a capped session expiry must be announced in CONNACK"
    assert 0x24 not in props or props[0x24] == [2] or props[0x24] == [1], "Maximum QoS is 0 or 1 when present"
    client.close()


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_packet_above_max_packet_size_closes_the_connection(hub_with, ns, version):
    """MQTT 5.0 3.1.2.1 / 4.13: a packet above the announced Maximum Packet Size is a protocol
    error: v5 gets DISCONNECT 0x95 (Packet too large), both are closed; others keep working.
    """
    hub = hub_with(mqtt={"max_packet_size": 1024})
    client, connack = raw.open_session(hub.mqtt_addr, f"big{version}", version=version)
    assert connack["code"] == 0
    client.send(raw.publish(f"{ns}/big", b"x" * 4000, qos=0, version=version))
    pkt = client.packet_within(5.0)
    if pkt is not None:
        assert version == V5 and pkt.type == raw.DISCONNECT and pkt.body[0] == 0x95, pkt
    assert client.closed_within(5.0)
    again, connack = raw.open_session(hub.mqtt_addr, f"small{version}", version=version)
    assert connack["code"] == 0
    again.close()


def test_full_queue_of_connected_qos1_subscriber_disconnects_it_with_0x97(hub_with, peer, ns):
    """hub-interface queue policy: QoS 1 over max_session_queue_messages -> DISCONNECT 0x97,
    and the publisher is never blocked by the slow subscriber.
    """
    hub = hub_with(limits={"max_session_queue_messages": 3})
    topic = f"{ns}/flood"
    slow = peer(hub, "slow", connect_props={"ReceiveMaximum": 1}, manual_ack=True)
    slow.subscribe(topic, qos=1)
    pub = peer(hub, "pub")
    for i in range(20):
        assert pub.publish(topic, b"%d" % i, qos=1) in (0x00, 0x10)
    ended = slow.wait_disconnected()
    assert ended.from_server_packet and ended.reason_code == 0x97


def test_slow_qos0_subscriber_does_not_block_others_and_drops_are_counted(hub_with, peer, ns):
    """hub-interface queue policy: a subscriber that never reads loses QoS 0 messages (counted
    as iothub_messages_dropped_total{reason="queue_full"}); publisher and other subscribers go on.
    """
    hub = hub_with(limits={"max_session_queue_messages": 20})
    topic = f"{ns}/firehose"
    stuck, connack = raw.open_session(hub.mqtt_addr, "stuck", version=V5, rcvbuf=4096)
    assert connack["code"] == 0
    stuck.send(raw.subscribe(1, [(topic, 0)], version=V5))
    stuck.expect(raw.SUBACK)  # ...and never reads again
    fast = peer(hub, "fast")
    fast.subscribe(topic, qos=1)
    pub = peer(hub, "pub")
    payload = b"p" * 65536
    count = 300  # ~19 MiB: far more than the stuck reader's 4 KiB window and the kernel buffers hold
    for i in range(count):
        pub.publish(topic, payload[:-8] + b"%08d" % i, qos=1)
        fast.expect(topic=topic)
    _, metrics = _get(hub, "/metrics")
    assert _dropped(metrics, "queue_full") > 0, metrics
    stuck.close()


def test_sigterm_sends_v5_disconnect_0x8b_and_exits_zero(hub, peer):
    """hub-interface: graceful shutdown; [v5 MQTT-3.14.2-1] a valid DISCONNECT reason code."""
    v5 = peer(hub, "v5", version=V5)
    v3 = peer(hub, "v3", version=V311)
    hub.process.send_signal(signal.SIGTERM)
    ended = v5.wait_disconnected()
    assert ended.from_server_packet and ended.reason_code == 0x8B
    v3.wait_disconnected()
    assert hub.process.wait(timeout=10) == 0
