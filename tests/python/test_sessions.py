"""Persistent sessions: queued messages delivered after reconnect, session expiry, takeover.

``[v3 ...]`` ids are MQTT 3.1.1 statements, ``[v5 ...]`` ids MQTT 5.0 statements.
"""

from __future__ import annotations

import time
import urllib.request

import pytest

import raw
from clients import V5, V311

BOTH = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


def _persistent(version: int) -> dict:
    return {"clean": False, "session_expiry": 300} if version == V5 else {"clean": False}


@pytest.mark.parametrize("qos", [1, 2])
@BOTH
def test_messages_queued_while_offline_are_delivered_in_order_after_resume(hub, peer, ns, version, qos):
    """[v3 MQTT-3.1.2-4] [v3 MQTT-3.1.2-5] [v3 MQTT-4.1.0-1] [v3 MQTT-4.5.0-1] [v3 MQTT-4.6.0-6]
    [v5 MQTT-3.1.2-5] [v5 MQTT-3.1.2-23] [v5 MQTT-4.5.0-1] [v5 MQTT-4.6.0-6] [v5 MQTT-3.2.2-3]
    """
    topic = f"{ns}/queued"
    sub = peer(hub, "sub", version=version, **_persistent(version))
    sub.subscribe(topic, qos=qos)
    sub.disconnect()
    pub = peer(hub, "pub", version=version)
    for i in range(10):
        pub.publish(topic, b"m%d" % i, qos=qos)
    back = peer(hub, "sub", version=version, connect=False, **_persistent(version))
    assert back.connect().session_present is True
    got = back.expect_n(10)
    assert [m.payload for m in got] == [b"m%d" % i for i in range(10)]
    assert all(m.qos == qos for m in got)
    back.expect_none(topic=topic)


def test_v5_session_is_discarded_after_session_expiry(hub, peer, ns):
    """[v5 MQTT-4.1.0-2] [v5 MQTT-3.2.2-3]"""
    topic = f"{ns}/expiring"
    sub = peer(hub, "sub", clean=False, session_expiry=1)
    sub.subscribe(topic, qos=1)
    sub.disconnect()
    time.sleep(2.5)  # past the 1 s session expiry
    pub = peer(hub, "pub")
    pub.publish(topic, b"too late", qos=1)
    back = peer(hub, "sub", connect=False, clean=False, session_expiry=300)
    assert back.connect().session_present is False
    back.expect_none(topic=topic)


def test_v5_session_expiry_zero_ends_session_with_the_connection(hub, peer, ns):
    """[v5 MQTT-3.1.2-23] (inverse: with expiry 0 nothing is kept) [v5 MQTT-3.2.2-3]"""
    topic = f"{ns}/gone"
    sub = peer(hub, "sub", clean=False, session_expiry=0)
    sub.subscribe(topic, qos=1)
    sub.disconnect()
    # Reconnecting before the hub has read the DISCONNECT takes the live session over
    # (session present, [MQTT-3.1.2-4]): wait for the old connection to end first.
    _wait_for_no_connections(hub)
    back = peer(hub, "sub", connect=False, clean=False)
    assert back.connect().session_present is False


def _wait_for_no_connections(hub) -> None:
    """Until the hub has ended every connection (``iothub_connections`` sums to 0): its old
    connection's DISCONNECT and a new connection's CONNECT are handled by different tasks, so
    a client that reconnects at once may legitimately take the session over before the
    DISCONNECT is read. (paho closes its socket itself, so the client cannot see the server
    finish.) Against an external broker, which has no such figure, a short pause instead."""
    if hub.api_addr is None:
        time.sleep(0.5)
        return
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(f"http://{hub.api_addr[0]}:{hub.api_addr[1]}/metrics", timeout=5) as r:
            text = r.read().decode()
        live = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("iothub_connections{") or line.startswith("iothub_connections ")
        )
        if live == 0:
            return
        assert time.monotonic() < deadline, f"{live} connections still open"
        time.sleep(0.02)


def test_v5_disconnect_can_shorten_session_expiry(hub, peer, ns):
    """MQTT 5.0 3.14.2.2.2: the Session Expiry Interval on DISCONNECT replaces the CONNECT value."""
    sub = peer(hub, "sub", clean=False, session_expiry=300)
    sub.subscribe(f"{ns}/t", qos=1)
    sub.disconnect(props={"SessionExpiryInterval": 0})
    _wait_for_no_connections(hub)
    back = peer(hub, "sub", connect=False, clean=False, session_expiry=300)
    assert back.connect().session_present is False


def test_v5_session_is_kept_while_connected_beyond_expiry(hub, peer, ns):
    """[v5 MQTT-4.1.0-1] the expiry interval only starts when the connection closes."""
    topic = f"{ns}/alive"
    sub = peer(hub, "sub", clean=False, session_expiry=1)
    sub.subscribe(topic, qos=1)
    time.sleep(2.0)
    pub = peer(hub, "pub")
    pub.publish(topic, b"still here", qos=1)
    assert sub.expect(topic=topic).payload == b"still here"


@BOTH
def test_takeover_keeps_the_session_for_the_new_connection(hub, peer, ns, version):
    """[v3 MQTT-3.1.4-2] [v3 MQTT-3.1.2-4] [v5 MQTT-3.1.4-3] [v5 MQTT-3.1.2-5]"""
    topic = f"{ns}/takeover"
    old = peer(hub, "dev", version=version, **_persistent(version))
    old.subscribe(topic, qos=1)
    new = peer(hub, "dev", version=version, connect=False, **_persistent(version))
    assert new.connect().session_present is True
    old.wait_disconnected()
    pub = peer(hub, "pub", version=version)
    pub.publish(topic, b"to the new one", qos=1)
    assert new.expect(topic=topic).payload == b"to the new one"


def test_v5_takeover_disconnect_has_no_session_expiry_property(hub):
    """[v5 MQTT-3.1.4-3] [v5 MQTT-3.14.2-1] [v5 MQTT-3.14.2-2] [v5 MQTT-3.14.0-1] [v5 MQTT-3.14.4-1]
    [v5 MQTT-3.14.4-2]
    """
    old, connack = raw.open_session(hub.mqtt_addr, "rawtake", version=5)
    assert connack["code"] == 0
    new, connack2 = raw.open_session(hub.mqtt_addr, "rawtake", version=5)
    assert connack2["code"] == 0
    pkt = old.read(5.0)
    assert pkt is not None, "old connection closed without DISCONNECT 0x8E"
    assert pkt.type == raw.DISCONNECT and pkt.flags == 0
    assert pkt.body[0] == 0x8E
    if len(pkt.body) > 1:
        props, _ = raw.decode_props(pkt.body, 1)
        assert raw.SESSION_EXPIRY not in props
    assert old.read(5.0) is None, "nothing may follow the DISCONNECT but the close"
    new.close()
