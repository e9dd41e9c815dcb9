"""Shared subscriptions ($share/<group>/<filter>, MQTT 5.0 section 4.8.2).

All ids here are MQTT 5.0 statements (``[v5 ...]``).
"""

from __future__ import annotations

import struct

import pytest

import raw


def _drain(client, timeout: float = 0.5) -> list:
    got = []
    while True:
        try:
            got.append(client.expect(timeout=timeout))
        except AssertionError:
            return got


def test_each_message_goes_to_one_member_of_the_group(hub, peer, ns):
    """[v5 MQTT-4.8.2-1] [v5 MQTT-4.8.2-2] (well-formed share names accepted) and MQTT 5.0 4.8.2:
    one copy per group, while a normal subscription still gets every message.
    """
    topic = f"{ns}/jobs"
    members = [peer(hub, f"worker{i}") for i in range(2)]
    for member in members:
        assert member.subscribe(f"$share/workers/{ns}/+", qos=1) == [1]
    audit = peer(hub, "audit")
    audit.subscribe(topic, qos=1)
    pub = peer(hub, "pub")
    count = 20
    for i in range(count):
        pub.publish(topic, b"%d" % i, qos=1)
    assert sorted(int(m.payload) for m in audit.expect_n(count)) == list(range(count))
    shared = [m for member in members for m in _drain(member)]
    assert sorted(int(m.payload) for m in shared) == list(range(count)), "every job exactly once in the group"
    assert all(m.topic == topic for m in shared)


def test_two_groups_each_get_every_message(hub, peer, ns):
    """MQTT 5.0 4.8.2: each Shared Subscription (group) receives its own copy."""
    topic = f"{ns}/events"
    first = peer(hub, "first")
    first.subscribe(f"$share/one/{topic}", qos=1)
    second = peer(hub, "second")
    second.subscribe(f"$share/two/{topic}", qos=1)
    pub = peer(hub, "pub")
    for i in range(5):
        pub.publish(topic, b"%d" % i, qos=1)
    assert [m.payload for m in first.expect_n(5)] == [b"%d" % i for i in range(5)]
    assert [m.payload for m in second.expect_n(5)] == [b"%d" % i for i in range(5)]


def test_shared_delivery_respects_each_members_granted_qos(hub, peer, ns):
    """[v5 MQTT-4.8.2-3]"""
    topic = f"{ns}/q"
    low = peer(hub, "low")
    assert low.subscribe(f"$share/g/{topic}", qos=0) == [0]
    high = peer(hub, "high")
    assert high.subscribe(f"$share/g/{topic}", qos=2) == [2]
    pub = peer(hub, "pub")
    for i in range(10):
        pub.publish(topic, b"%d" % i, qos=2)
    got_low, got_high = _drain(low), _drain(high)
    assert len(got_low) + len(got_high) == 10
    assert all(m.qos == 0 for m in got_low)
    assert all(m.qos == 2 for m in got_high)


@pytest.mark.parametrize("bad", ["$share/g", "$share//{ns}/t", "$share/g+/{ns}/t", "$share/g#/{ns}/t", "$share/g/"])
def test_malformed_share_name_is_refused(hub, ns, bad):
    """[v5 MQTT-4.8.2-1] [v5 MQTT-4.8.2-2] SUBACK 0x8F (or a protocol-error DISCONNECT)."""
    client, connack = raw.open_session(hub.mqtt_addr, "badshare", version=5)
    assert connack["code"] == 0
    client.send(raw.subscribe(4, [(bad.replace("{ns}", ns), 1)], version=5))
    pkt = client.packet_within(5.0)
    if pkt is None or pkt.type == raw.DISCONNECT:
        assert pkt is None or pkt.body[0] >= 0x80
        assert client.closed_within(5.0)
        return
    assert pkt.type == raw.SUBACK and pkt.packet_id() == 4, pkt
    _, pos = raw.decode_props(pkt.body, 2)
    assert pkt.body[pos] >= 0x80, f"{bad} was granted"


def test_unacknowledged_qos1_goes_to_another_member_when_session_ends(hub, peer, ns):
    """MQTT 5.0 4.8.2 (SHOULD) and issue 2: a QoS 1 message in flight to a member whose
    session ends is sent to another member of the group.
    """
    topic = f"{ns}/work"
    flaky = peer(hub, "flaky", manual_ack=True)
    flaky.subscribe(f"$share/g/{topic}", qos=1)
    pub = peer(hub, "pub")
    pub.publish(topic, b"job", qos=1)
    assert flaky.expect(topic=topic).payload == b"job"  # never acknowledged
    steady = peer(hub, "steady")
    steady.subscribe(f"$share/g/{topic}", qos=1)
    flaky.drop()  # clean start, session expiry 0: the session ends with the connection
    assert steady.expect(topic=topic).payload == b"job"


def _raw_member(hub, client_id: str, share: str) -> raw.RawClient:
    client, connack = raw.open_session(hub.mqtt_addr, client_id, version=5)
    assert connack["code"] == 0
    client.send(raw.subscribe(1, [(share, 2)], version=5))
    client.expect(raw.SUBACK)
    return client


def test_qos2_in_flight_is_not_sent_to_another_member_when_session_ends(hub, peer, ns):
    """[v5 MQTT-4.8.2-5]"""
    topic = f"{ns}/once"
    first = _raw_member(hub, "qos2first", f"$share/g/{topic}")
    pub = peer(hub, "pub")
    pub.publish(topic, b"exactly once", qos=2)
    delivery = first.expect(raw.PUBLISH).publish_fields(5)
    assert delivery["qos"] == 2
    other = peer(hub, "other")
    other.subscribe(f"$share/g/{topic}", qos=2)
    first.close()  # no PUBREC; the session (expiry 0) ends
    other.expect_none(topic=topic, timeout=1.5)


def test_rejected_shared_message_is_not_sent_to_another_member(hub, peer, ns):
    """[v5 MQTT-4.8.2-6]"""
    topic = f"{ns}/refused"
    first = _raw_member(hub, "refuser", f"$share/g/{topic}")
    pub = peer(hub, "pub")
    pub.publish(topic, b"no thanks", qos=1)
    delivery = first.expect(raw.PUBLISH).publish_fields(5)
    other = peer(hub, "other")
    other.subscribe(f"$share/g/{topic}", qos=1)
    first.send(raw.frame(raw.PUBACK << 4, struct.pack("!H", delivery["packet_id"]) + bytes([0x80])))
    first.close()
    other.expect_none(topic=topic, timeout=1.5)


def test_qos2_in_flight_to_a_member_is_completed_when_it_reconnects(hub, peer, ns):
    """[v5 MQTT-4.8.2-4] [v5 MQTT-4.4.0-1]"""
    topic = f"{ns}/resume"
    props = [(raw.SESSION_EXPIRY, 300)]
    member, _ = raw.open_session(hub.mqtt_addr, "q2member", version=5, clean=False, props=props)
    member.send(raw.subscribe(1, [(f"$share/g/{topic}", 2)], version=5))
    member.expect(raw.SUBACK)
    pub = peer(hub, "pub")
    pub.publish(topic, b"finish", qos=2)
    first = member.expect(raw.PUBLISH).publish_fields(5)
    member.close()
    again, connack = raw.open_session(hub.mqtt_addr, "q2member", version=5, clean=False, props=props)
    assert connack["flags"] & 0x01 == 1
    resent = again.expect(raw.PUBLISH).publish_fields(5)
    assert (resent["payload"], resent["packet_id"], resent["dup"]) == (b"finish", first["packet_id"], True)
