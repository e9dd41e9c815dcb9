"""QoS 0/1/2 in both directions, packet identifiers, redelivery, ordering, receive maximum.

``[v3 ...]`` ids are MQTT 3.1.1 statements, ``[v5 ...]`` ids MQTT 5.0 statements.
"""

from __future__ import annotations

import itertools
import struct
import time

import pytest

import raw
from clients import V5, V311

BOTH = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
MATRIX = [(v, p, s) for v in (V311, V5) for p, s in itertools.product((0, 1, 2), repeat=2)]


@pytest.mark.parametrize(
    ("version", "pub_qos", "sub_qos"),
    MATRIX,
    ids=[f"{'v5' if v == V5 else 'v311'}-pub{p}-sub{s}" for v, p, s in MATRIX],
)
def test_delivery_qos_is_minimum_of_publish_and_granted_qos(hub, peer, ns, version, pub_qos, sub_qos):
    """[v3 MQTT-3.3.4-1] [v3 MQTT-3.8.4-5] [v3 MQTT-3.8.4-6] [v3 MQTT-4.3.1-1] [v3 MQTT-4.3.2-2]
    [v3 MQTT-4.3.3-2] [v3 MQTT-4.5.0-1] [v3 MQTT-3.3.1-2] [v3 MQTT-3.3.1-3] [v3 MQTT-3.3.2-3]
    [v5 MQTT-3.3.4-1] [v5 MQTT-3.8.4-7] [v5 MQTT-3.8.4-8] [v5 MQTT-4.3.1-1] [v5 MQTT-4.3.2-4]
    [v5 MQTT-4.3.3-8] [v5 MQTT-4.3.3-11] [v5 MQTT-4.5.0-1] [v5 MQTT-3.3.1-2] [v5 MQTT-3.3.1-3]
    [v5 MQTT-3.3.2-3] [v5 MQTT-4.3.2-2] [v5 MQTT-4.3.3-2] [v3 MQTT-4.1.0-2] [v5 MQTT-4.1.0-1]
    """
    topic = f"{ns}/q"
    sub = peer(hub, "sub", version=version)
    assert sub.subscribe(topic, qos=sub_qos) == [sub_qos]
    pub = peer(hub, "pub", version=version)
    result = pub.publish(topic, b"payload-%d" % pub_qos, qos=pub_qos)
    if pub_qos and version == V5:
        assert result in (0x00, 0x10), "PUBACK/PUBREC reason must be success or no matching subscribers"
    msg = sub.expect(topic=topic)
    assert msg.payload == b"payload-%d" % pub_qos
    assert msg.qos == min(pub_qos, sub_qos)
    assert msg.dup is False, "a first delivery is not a retransmission"
    assert msg.retain is False
    sub.expect_none(topic=topic)


def _raw_subscriber(hub, client_id: str, version: int, topic: str, qos: int, clean: bool = True) -> raw.RawClient:
    props = [(raw.SESSION_EXPIRY, 300)] if version == 5 and not clean else None
    client, connack = raw.open_session(hub.mqtt_addr, client_id, version=version, clean=clean, props=props)
    assert connack["code"] == 0
    client.send(raw.subscribe(11, [(topic, qos)], version=version))
    suback = client.expect(raw.SUBACK)
    assert suback.packet_id() == 11
    return client


@BOTH
def test_packet_identifiers_are_echoed_and_server_ids_are_nonzero_and_unique(hub, ns, version):
    """[v3 MQTT-2.3.1-1] [v3 MQTT-2.3.1-4] [v3 MQTT-2.3.1-6] [v3 MQTT-2.3.1-7] [v3 MQTT-3.8.4-1]
    [v3 MQTT-3.8.4-2] [v3 MQTT-2.3.1-5] [v5 MQTT-1.5.5-1] (raw.read checks every Remaining Length) [v5 MQTT-2.2.1-2] [v5 MQTT-2.2.1-4] [v5 MQTT-2.2.1-5] [v5 MQTT-2.2.1-6]
    [v5 MQTT-3.8.4-1] [v5 MQTT-3.8.4-2] [v5 MQTT-4.3.2-1] [v5 MQTT-4.3.3-1]
    """
    topic = f"{ns}/ids"
    sub = _raw_subscriber(hub, f"idsub{version}", version, topic, 2)
    pub, _ = raw.open_session(hub.mqtt_addr, f"idpub{version}", version=version)
    for packet_id, qos in ((0x1234, 1), (0xFFFF, 2), (1, 1)):
        pub.send(raw.publish(topic, b"x", qos=qos, packet_id=packet_id, version=version))
        ack = pub.expect(raw.PUBACK if qos == 1 else raw.PUBREC)
        assert ack.packet_id() == packet_id
        if qos == 2:
            pub.send(raw.ack(raw.PUBREL, packet_id))
            assert pub.expect(raw.PUBCOMP).packet_id() == packet_id
    pub.send(raw.publish(topic, b"q0", qos=0, version=version))
    seen_ids = set()
    for _ in range(3):
        delivery = sub.expect(raw.PUBLISH).publish_fields(version)
        assert delivery["packet_id"] not in (None, 0)
        assert delivery["packet_id"] not in seen_ids, "packet id reused while still in flight"
        seen_ids.add(delivery["packet_id"])
    q0 = sub.expect(raw.PUBLISH)
    fields = q0.publish_fields(version)
    assert fields["qos"] == 0 and fields["packet_id"] is None and fields["payload"] == b"q0"
    pub.close()
    sub.close()


@BOTH
def test_inbound_qos2_duplicate_before_pubrel_is_delivered_once(hub, ns, version):
    """[v3 MQTT-4.3.3-2] [v5 MQTT-4.3.3-10] [v5 MQTT-4.3.3-11] [v5 MQTT-4.3.3-12] [v3 MQTT-3.3.1-3]
    [v5 MQTT-3.6.2-1] [v3 MQTT-4.3.3-1] [v5 MQTT-4.3.3-4]

    A re-sent PUBLISH (DUP=1, same id) before PUBREL is answered with PUBREC again
    and not forwarded twice; once PUBCOMP is sent, the same id starts a new message.
    """
    topic = f"{ns}/exactly-once"
    sub = _raw_subscriber(hub, f"x2sub{version}", version, topic, 2)
    pub, _ = raw.open_session(hub.mqtt_addr, f"x2pub{version}", version=version)
    pub.send(raw.publish(topic, b"one", qos=2, packet_id=7, version=version))
    assert pub.expect(raw.PUBREC).packet_id() == 7
    pub.send(raw.publish(topic, b"one", qos=2, packet_id=7, dup=True, version=version))
    assert pub.expect(raw.PUBREC).packet_id() == 7
    pub.send(raw.ack(raw.PUBREL, 7))
    assert pub.expect(raw.PUBCOMP).packet_id() == 7
    pub.send(raw.publish(topic, b"two", qos=2, packet_id=7, version=version))
    assert pub.expect(raw.PUBREC).packet_id() == 7
    pub.send(raw.ack(raw.PUBREL, 7))
    assert pub.expect(raw.PUBCOMP).packet_id() == 7

    payloads, released = [], 0
    while released < 2:
        pkt = sub.read()
        assert pkt is not None, "subscriber connection closed"
        if pkt.type == raw.PUBLISH:
            delivery = pkt.publish_fields(version)
            payloads.append(delivery["payload"])
            sub.send(raw.ack(raw.PUBREC, delivery["packet_id"]))
        else:
            assert pkt.type == raw.PUBREL and pkt.flags == 0x02, pkt
            if version == 5 and len(pkt.body) > 2:
                assert pkt.body[2] in (0x00, 0x92), f"not a PUBREL reason code: {pkt}"
            sub.send(raw.ack(raw.PUBCOMP, pkt.packet_id()))
            released += 1
    assert payloads == [b"one", b"two"]
    assert sub.packet_within(0.5) is None, "a third copy was delivered"


@BOTH
def test_inbound_qos1_same_id_after_puback_is_a_new_message(hub, ns, version):
    """[v3 MQTT-4.3.2-2] [v5 MQTT-4.3.2-5]"""
    topic = f"{ns}/again"
    sub = _raw_subscriber(hub, f"r1sub{version}", version, topic, 1)
    pub, _ = raw.open_session(hub.mqtt_addr, f"r1pub{version}", version=version)
    for payload in (b"first", b"second"):
        pub.send(raw.publish(topic, payload, qos=1, packet_id=5, dup=payload == b"second", version=version))
        assert pub.expect(raw.PUBACK).packet_id() == 5
    got = []
    for _ in range(2):
        delivery = sub.expect(raw.PUBLISH).publish_fields(version)
        got.append(delivery["payload"])
        sub.send(raw.ack(raw.PUBACK, delivery["packet_id"]))
    assert got == [b"first", b"second"]


@BOTH
def test_unacknowledged_qos1_is_resent_with_dup_and_same_id_after_reconnect(hub, ns, version):
    """[v3 MQTT-4.4.0-1] [v3 MQTT-3.3.1-1] [v3 MQTT-2.3.1-3] [v3 MQTT-3.1.2-5] [v3 MQTT-4.1.0-1]
    [v5 MQTT-4.4.0-1] [v5 MQTT-3.3.1-1] [v5 MQTT-4.3.2-3] [v5 MQTT-3.1.2-23]
    """
    topic = f"{ns}/redeliver"
    sub = _raw_subscriber(hub, f"rdsub{version}", version, topic, 1, clean=False)
    pub, _ = raw.open_session(hub.mqtt_addr, f"rdpub{version}", version=version)
    pub.send(raw.publish(topic, b"ack me", qos=1, packet_id=3, version=version))
    pub.expect(raw.PUBACK)
    first = sub.expect(raw.PUBLISH).publish_fields(version)
    assert first["dup"] is False
    sub.close()  # no PUBACK, no DISCONNECT

    props = [(raw.SESSION_EXPIRY, 300)] if version == 5 else None
    again, connack = raw.open_session(hub.mqtt_addr, f"rdsub{version}", version=version, clean=False, props=props)
    assert connack["flags"] & 0x01 == 1, "session present"
    resent = again.expect(raw.PUBLISH).publish_fields(version)
    assert resent["payload"] == b"ack me"
    assert resent["packet_id"] == first["packet_id"]
    assert resent["dup"] is True
    again.send(raw.ack(raw.PUBACK, resent["packet_id"]))
    assert again.packet_within(0.5) is None, "resent more than once"


@BOTH
def test_qos2_pubrel_is_resent_after_reconnect_and_publish_is_not(hub, ns, version):
    """[v3 MQTT-4.4.0-1] [v5 MQTT-4.4.0-1] [v5 MQTT-4.3.3-3] [v5 MQTT-4.3.3-4] [v5 MQTT-4.3.3-5]
    [v5 MQTT-4.3.3-6] [v3 MQTT-4.3.3-1]
    """
    topic = f"{ns}/rel"
    sub = _raw_subscriber(hub, f"relsub{version}", version, topic, 2, clean=False)
    pub, _ = raw.open_session(hub.mqtt_addr, f"relpub{version}", version=version)
    pub.send(raw.publish(topic, b"exactly", qos=2, packet_id=9, version=version))
    pub.expect(raw.PUBREC)
    pub.send(raw.ack(raw.PUBREL, 9))
    pub.expect(raw.PUBCOMP)
    delivery = sub.expect(raw.PUBLISH).publish_fields(version)
    sub.send(raw.ack(raw.PUBREC, delivery["packet_id"]))
    rel = sub.expect(raw.PUBREL)
    assert rel.packet_id() == delivery["packet_id"]
    sub.close()  # PUBREL never answered

    props = [(raw.SESSION_EXPIRY, 300)] if version == 5 else None
    again, connack = raw.open_session(hub.mqtt_addr, f"relsub{version}", version=version, clean=False, props=props)
    assert connack["flags"] & 0x01 == 1
    resent = again.expect(raw.PUBREL)
    assert resent.packet_id() == delivery["packet_id"]
    again.send(raw.ack(raw.PUBCOMP, delivery["packet_id"]))
    assert again.packet_within(0.5) is None, "PUBLISH must not be re-sent after PUBREL"


@pytest.mark.parametrize("qos", [0, 1, 2])
@BOTH
def test_messages_from_one_publisher_arrive_in_order(hub, peer, ns, version, qos):
    """[v3 MQTT-4.6.0-5] [v3 MQTT-4.6.0-6] [v5 MQTT-4.6.0-5] [v5 MQTT-4.6.0-6]"""
    topic = f"{ns}/ordered"
    sub = peer(hub, "sub", version=version)
    sub.subscribe(topic, qos=qos)
    pub = peer(hub, "pub", version=version)
    count = 100
    for i in range(count):
        pub.publish(topic, str(i).encode(), qos=qos, wait=False)
    got = [int(m.payload) for m in sub.expect_n(count)]
    assert got == list(range(count))


def test_v5_server_respects_client_receive_maximum(hub, peer, ns):
    """[v5 MQTT-3.3.4-9] [v5 MQTT-4.9.0-1] [v5 MQTT-4.9.0-2] [v5 MQTT-4.9.0-3] [v5 MQTT-3.3.4-10]

    With Receive Maximum 2 and no PUBACKs, the server sends two QoS 1 PUBLISH
    packets and waits; it still answers other packets (SUBSCRIBE); each PUBACK
    releases one more message.
    """
    topic = f"{ns}/flow"
    sub = peer(hub, "sub", connect_props={"ReceiveMaximum": 2}, manual_ack=True)
    sub.subscribe(topic, qos=1)
    pub = peer(hub, "pub")
    for i in range(5):
        pub.publish(topic, str(i).encode(), qos=1)
    first = sub.expect_n(2)
    sub.expect_none()
    assert sub.subscribe(f"{ns}/other", qos=1) == [1], "other packets must still be answered"
    delivered = list(first)
    while len(delivered) < 5:
        sub.ack(delivered[len(delivered) - 2])
        delivered.append(sub.expect())
        sub.expect_none(timeout=0.2)
    assert [int(m.payload) for m in delivered] == list(range(5))


@BOTH
def test_qos2_delivery_started_before_unsubscribe_is_completed(hub, ns, version):
    """[v3 MQTT-3.10.4-3] [v5 MQTT-3.10.4-3]"""
    topic = f"{ns}/unsub-inflight"
    sub = _raw_subscriber(hub, f"uifsub{version}", version, topic, 2)
    pub, _ = raw.open_session(hub.mqtt_addr, f"uifpub{version}", version=version)
    pub.send(raw.publish(topic, b"finish me", qos=2, packet_id=4, version=version))
    pub.expect(raw.PUBREC)
    pub.send(raw.ack(raw.PUBREL, 4))
    pub.expect(raw.PUBCOMP)
    delivery = sub.expect(raw.PUBLISH).publish_fields(version)
    body = struct.pack("!H", 12) + (b"\x00" if version == 5 else b"") + raw.utf8(topic)
    sub.send(raw.frame((raw.UNSUBSCRIBE << 4) | 0x02, body))
    assert sub.expect(raw.UNSUBACK).packet_id() == 12
    sub.send(raw.ack(raw.PUBREC, delivery["packet_id"]))
    rel = sub.expect(raw.PUBREL)
    assert rel.packet_id() == delivery["packet_id"]
    sub.send(raw.ack(raw.PUBCOMP, delivery["packet_id"]))
    pub.send(raw.publish(topic, b"after", qos=1, packet_id=5, version=version))
    pub.expect(raw.PUBACK)
    assert sub.packet_within(0.5) is None, "delivered after UNSUBSCRIBE"


def test_v5_qos2_publish_sent_is_not_expired_and_is_resent(hub, ns):
    """[v5 MQTT-4.3.3-7] [v5 MQTT-4.4.0-1]: once sent, a QoS 2 PUBLISH is re-sent on resume even
    after its Message Expiry Interval has passed.
    """
    topic = f"{ns}/expiring-q2"
    sub = _raw_subscriber(hub, "q2expsub", 5, topic, 2, clean=False)
    pub, _ = raw.open_session(hub.mqtt_addr, "q2exppub", version=5)
    pub.send(raw.publish(topic, b"keep", qos=2, packet_id=1, version=5, props=[(0x02, 1)]))
    pub.expect(raw.PUBREC)
    pub.send(raw.ack(raw.PUBREL, 1))
    pub.expect(raw.PUBCOMP)
    first = sub.expect(raw.PUBLISH).publish_fields(5)
    sub.close()  # no PUBREC
    time.sleep(2.2)  # past the 1 s expiry
    again, connack = raw.open_session(hub.mqtt_addr, "q2expsub", version=5, clean=False, props=[(raw.SESSION_EXPIRY, 300)])
    assert connack["flags"] & 0x01 == 1
    resent = again.expect(raw.PUBLISH).publish_fields(5)
    assert (resent["payload"], resent["packet_id"], resent["dup"]) == (b"keep", first["packet_id"], True)


def test_v5_qos2_exchange_continues_after_message_expiry(hub, ns):
    """[v5 MQTT-4.3.3-13]: the hub answers PUBREL with PUBCOMP even if the message has expired."""
    pub, _ = raw.open_session(hub.mqtt_addr, "q2lateprel", version=5)
    pub.send(raw.publish(f"{ns}/late", b"x", qos=2, packet_id=6, version=5, props=[(0x02, 1)]))
    assert pub.expect(raw.PUBREC).packet_id() == 6
    time.sleep(2.2)
    pub.send(raw.ack(raw.PUBREL, 6))
    assert pub.expect(raw.PUBCOMP).packet_id() == 6


def test_v5_every_packet_fits_the_client_maximum_packet_size(hub, ns):
    """[v5 MQTT-3.1.2-24] [v5 MQTT-3.9.2-1] [v5 MQTT-3.9.2-2] [v5 MQTT-3.11.2-1] [v5 MQTT-3.11.2-2]
    [v5 MQTT-3.4.2-2] [v5 MQTT-3.4.2-3] [v5 MQTT-3.5.2-2] [v5 MQTT-3.5.2-3] [v5 MQTT-3.7.2-2] [v5 MQTT-3.7.2-3]
    [v5 MQTT-3.2.2-19] [v5 MQTT-3.2.2-20]

    The client announces a Maximum Packet Size equal to the hub's CONNACK size, then provokes
    acknowledgements, some with non-success codes (UNSUBACK 0x11, PUBACK/PUBREC 0x10) where a
    server might add a Reason String or User Properties: every packet must fit, and the
    connection stays up.
    """
    probe = raw.RawClient(hub.mqtt_addr)
    probe.send(raw.connect("mpsprobe", version=5))
    connack = probe.expect(raw.CONNACK)
    limit = max(2 + len(connack.body), 12)
    probe.close()
    client = raw.RawClient(hub.mqtt_addr)
    client.send(raw.connect("mpsprobe", version=5, props=[(raw.MAXIMUM_PACKET_SIZE, limit)]))
    sent = [client.expect(raw.CONNACK)]
    assert sent[0].body[1] == 0
    client.send(raw.subscribe(1, [(f"{ns}/sub", 1)], version=5))
    client.send(raw.frame((raw.UNSUBSCRIBE << 4) | 0x02, struct.pack("!H", 2) + b"\x00" + raw.utf8(f"{ns}/none")))
    client.send(raw.publish(f"{ns}/nobody", b"x", qos=1, packet_id=3, version=5))  # PUBACK 0x10
    client.send(raw.publish(f"{ns}/nobody", b"y", qos=2, packet_id=4, version=5))  # PUBREC 0x10
    for _ in range(4):
        pkt = client.read(5.0)
        assert pkt is not None, "connection closed"
        sent.append(pkt)
        if pkt.type == raw.PUBREC:
            client.send(raw.ack(raw.PUBREL, 4))
            sent.append(client.expect(raw.PUBCOMP))
    for pkt in sent:
        size = 1 + len(raw.varint(len(pkt.body))) + len(pkt.body)
        assert size <= limit, f"{pkt!r} is {size} bytes, above the client's Maximum Packet Size {limit}"
    client.close()
