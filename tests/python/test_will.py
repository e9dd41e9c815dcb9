"""Will messages: published on abnormal close, not on DISCONNECT, retained wills, v5 will delay.

``[v3 ...]`` ids are MQTT 3.1.1 statements, ``[v5 ...]`` ids MQTT 5.0 statements.
"""

from __future__ import annotations

import pytest

from clients import V5, V311

BOTH = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


@pytest.mark.parametrize("will_qos", [0, 1, 2])
@BOTH
def test_will_is_published_when_the_connection_drops(hub, peer, ns, version, will_qos):
    """[v3 MQTT-3.1.2-8] [v3 MQTT-3.1.2-9] [v3 MQTT-3.1.2-16] [v5 MQTT-3.1.2-7] [v5 MQTT-3.1.2-8]
    [v5 MQTT-3.1.2-9] [v5 MQTT-3.1.2-12] [v5 MQTT-3.1.2-14] [v3 MQTT-3.1.3-1] [v5 MQTT-3.1.3-1]

    The CONNECT carries client id, will and user name, so the server parses the payload
    fields in their specified order.
    """
    topic = f"{ns}/will"
    watcher = peer(hub, "watch", version=version)
    watcher.subscribe(topic, qos=2)
    will = {"topic": topic, "payload": b"offline", "qos": will_qos}
    device = peer(hub, "device", version=version, will=will, username="device-user")
    device.drop()
    msg = watcher.expect(topic=topic)
    assert (msg.payload, msg.qos, msg.retain) == (b"offline", will_qos, False)
    watcher.expect_none(topic=topic)


@BOTH
def test_retained_will_is_stored_as_retained(hub, peer, ns, version):
    """[v3 MQTT-3.1.2-17] [v5 MQTT-3.1.2-15]"""
    topic = f"{ns}/status"
    device = peer(hub, "device", version=version, will={"topic": topic, "payload": b"dead", "qos": 1, "retain": True})
    device.drop()
    later = peer(hub, "later", version=version)
    later.subscribe(topic, qos=1)
    msg = later.expect(topic=topic)
    assert (msg.payload, msg.retain) == (b"dead", True)


@BOTH
def test_will_is_discarded_on_normal_disconnect(hub, peer, ns, version):
    """[v3 MQTT-3.1.2-10] [v3 MQTT-3.14.4-3] [v5 MQTT-3.1.2-10] [v5 MQTT-3.14.4-3]"""
    topic = f"{ns}/will"
    watcher = peer(hub, "watch", version=version)
    watcher.subscribe(topic, qos=1)
    device = peer(hub, "device", version=version, will={"topic": topic, "payload": b"offline", "qos": 1})
    device.disconnect()
    watcher.expect_none(topic=topic, timeout=1.0)


@BOTH
def test_no_will_without_will_flag(hub, peer, ns, version):
    """[v3 MQTT-3.1.2-12]"""
    watcher = peer(hub, "watch", version=version)
    watcher.subscribe(f"{ns}/#", qos=1)
    device = peer(hub, "device", version=version)
    device.drop()
    watcher.expect_none(timeout=1.0)


def test_v5_disconnect_with_will_message_reason_publishes_will(hub, peer, ns):
    """[v5 MQTT-3.1.2-8] DISCONNECT reason 0x04 keeps the will (only 0x00 deletes it)."""
    topic = f"{ns}/will"
    watcher = peer(hub, "watch")
    watcher.subscribe(topic, qos=1)
    device = peer(hub, "device", will={"topic": topic, "payload": b"bye", "qos": 1})
    device.disconnect(reason_code=0x04)
    assert watcher.expect(topic=topic).payload == b"bye"


def test_v5_will_properties_are_forwarded(hub, peer, ns):
    """[v5 MQTT-3.1.3-10] [v5 MQTT-3.3.2-4] [v5 MQTT-3.3.2-15] [v5 MQTT-3.3.2-16] [v5 MQTT-3.3.2-20]"""
    topic = f"{ns}/will"
    watcher = peer(hub, "watch")
    watcher.subscribe(topic, qos=1)
    user = [("b", "2"), ("a", "1"), ("b", "3")]
    props = {
        "UserProperty": user,
        "ContentType": "text/plain",
        "ResponseTopic": f"{ns}/reply",
        "CorrelationData": b"\x00\x01corr",
        "PayloadFormatIndicator": 1,
    }
    device = peer(hub, "device", will={"topic": topic, "payload": b"gone", "qos": 1, "props": props})
    device.drop()
    msg = watcher.expect(topic=topic)
    assert msg.user_properties == user
    assert msg.content_type == "text/plain"
    assert msg.response_topic == f"{ns}/reply"
    assert msg.correlation_data == b"\x00\x01corr"
    assert msg.payload_format_indicator == 1


def test_v5_will_delay_publishes_after_the_delay(hub, peer, ns):
    """[v5 MQTT-3.1.2-8] [v5 MQTT-3.1.2-23]"""
    topic = f"{ns}/will"
    watcher = peer(hub, "watch")
    watcher.subscribe(topic, qos=1)
    device = peer(
        hub,
        "device",
        session_expiry=60,
        will={"topic": topic, "payload": b"late", "qos": 1, "props": {"WillDelayInterval": 1}},
    )
    device.drop()
    assert watcher.expect(topic=topic, timeout=10.0).payload == b"late"


def test_v5_reconnect_within_will_delay_cancels_the_will(hub, peer, ns):
    """[v5 MQTT-3.1.3-9] [v5 MQTT-3.1.2-8]"""
    topic = f"{ns}/will"
    watcher = peer(hub, "watch")
    watcher.subscribe(topic, qos=1)
    will = {"topic": topic, "payload": b"flap", "qos": 1, "props": {"WillDelayInterval": 3}}
    device = peer(hub, "device", clean=False, session_expiry=60, will=will)
    device.drop()
    back = peer(hub, "device", clean=False, session_expiry=60)
    assert back.connack is not None and back.connack.session_present is True
    # Wait past the 3 s will delay: the will must never come.
    watcher.expect_none(topic=topic, timeout=4.5)


def test_v5_will_is_published_when_session_ends_before_will_delay(hub, peer, ns):
    """[v5 MQTT-3.1.2-8] [v5 MQTT-4.1.0-2]

    Will delay 300 s, session expiry 1 s: the will goes out when the session ends.
    """
    topic = f"{ns}/will"
    watcher = peer(hub, "watch")
    watcher.subscribe(topic, qos=1)
    will = {"topic": topic, "payload": b"session over", "qos": 1, "props": {"WillDelayInterval": 300}}
    device = peer(hub, "device", clean=True, session_expiry=1, will=will)
    device.drop()
    assert watcher.expect(topic=topic, timeout=10.0).payload == b"session over"
