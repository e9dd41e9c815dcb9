"""CONNECT / CONNACK: session present, clean start, client identifiers, takeover, keep alive.

Spec ids in docstrings: ``[v3 MQTT-x.y.z-n]`` is MQTT 3.1.1, ``[v5 MQTT-x.y.z-n]``
is MQTT 5.0 (the two specs reuse numbers for different statements).
"""

from __future__ import annotations

import pytest

import raw
from clients import V5, V311

BOTH = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
# MQTT 5.0 Table 3-1: the Connect Reason Code values.
CONNECT_REASON_CODES = {0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C,
                        0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F}


@BOTH
def test_clean_connect_is_accepted_without_session_present(hub, peer, version):
    """[v3 MQTT-3.1.4-4] [v3 MQTT-3.2.2-1] [v3 MQTT-3.2.0-1] [v5 MQTT-3.1.4-5] [v5 MQTT-3.2.2-2] [v5 MQTT-3.2.0-1]
    [v3 MQTT-7.1.1-1] [v5 MQTT-4.2.0-1] (over TCP, an ordered lossless byte stream)
    """
    client = peer(hub, "clean", version=version, connect=False)
    connack = client.connect()
    assert connack.reason_code == 0
    assert connack.session_present is False


@BOTH
def test_persistent_session_is_resumed_then_discarded_by_clean_start(hub, peer, ns, version):
    """[v3 MQTT-3.1.2-4] [v3 MQTT-3.1.2-6] [v3 MQTT-3.2.2-2] [v3 MQTT-3.2.2-3] [v3 MQTT-3.1.4-3]
    [v3 MQTT-3.1.3-2] [v5 MQTT-3.1.2-4] [v5 MQTT-3.1.2-5] [v5 MQTT-3.1.2-6] [v5 MQTT-3.2.2-2]
    [v5 MQTT-3.2.2-3] [v5 MQTT-3.1.4-4] [v5 MQTT-3.1.2-23] [v5 MQTT-3.1.3-2]

    A session kept with clean session 0 (v5: clean start 0 + session expiry) is
    found again on reconnect with session present 1 and its subscription still
    delivers; a clean reconnect discards it: session present 0 and the old
    subscription no longer delivers.
    """
    topic = f"{ns}/resume"
    keep = {"clean": False, "session_expiry": 300} if version == V5 else {"clean": False}
    first = peer(hub, "dev", version=version, connect=False, **keep)
    assert first.connect().session_present is False
    assert first.subscribe(topic, qos=1) == [1]
    first.disconnect()

    second = peer(hub, "dev", version=version, connect=False, **keep)
    assert second.connect().session_present is True
    sender = peer(hub, "sender", version=version)
    sender.publish(topic, b"still subscribed", qos=1)
    assert second.expect(topic=topic).payload == b"still subscribed"
    second.disconnect()

    third = peer(hub, "dev", version=version, connect=False, clean=True)
    assert third.connect().session_present is False
    sender.publish(topic, b"after clean start", qos=1)
    third.expect_none(topic=topic)


def test_v5_empty_client_id_gets_unique_assigned_identifier(hub, peer):
    """[v5 MQTT-3.1.3-6] [v5 MQTT-3.1.3-7] [v5 MQTT-3.2.2-16]"""
    first = peer(hub, "a", connect=False, client_id="")
    second = peer(hub, "b", connect=False, client_id="")
    a = first.connect().properties.get("AssignedClientIdentifier")
    b = second.connect().properties.get("AssignedClientIdentifier")
    assert a and b, "CONNACK must carry an Assigned Client Identifier for an empty client id"
    assert a != b


def test_v311_empty_client_id_with_clean_session_works(hub, ns):
    """[v3 MQTT-3.1.3-6] an empty client id with clean session 1 gets a server-assigned id and works."""
    client, connack = raw.open_session(hub.mqtt_addr, "", version=4, clean=True)
    assert connack["code"] == 0
    client.send(raw.subscribe(1, [(f"{ns}/anon", 1)]))
    assert raw.SUBACK == client.expect(raw.SUBACK).type
    client.send(raw.publish(f"{ns}/anon", b"hi", qos=1, packet_id=2))
    seen = {client.read().type, client.read().type}  # PUBACK and the delivery, in either order
    assert seen == {raw.PUBACK, raw.PUBLISH}
    client.close()


def test_v311_empty_client_id_with_persistent_session_is_rejected(hub):
    """[v3 MQTT-3.1.3-8] [v3 MQTT-3.2.2-4] [v3 MQTT-3.2.2-5] [v3 MQTT-3.1.3-9]"""
    client, connack = raw.open_session(hub.mqtt_addr, "", version=4, clean=False)
    assert connack["code"] == 0x02, "identifier rejected"
    assert connack["flags"] == 0, "session present must be 0 with a non-zero return code"
    assert client.closed_within(5.0)


@BOTH
def test_23_character_alphanumeric_client_id_is_accepted(hub, peer, version):
    """[v3 MQTT-3.1.3-5] [v5 MQTT-3.1.3-5]"""
    client_id = "Az09" * 5 + "abc"
    assert len(client_id) == 23
    client = peer(hub, "x", version=version, connect=False, client_id=client_id)
    assert client.connect().reason_code == 0


@pytest.mark.parametrize(
    ("protocol_name", "level"),
    [(b"MQIsdp", 3), (b"MQTT", 3), (b"MQTT", 6), (b"MQTT", 0)],
    ids=["mqisdp-3", "level-3", "level-6", "level-0"],
)
def test_unsupported_protocol_level_is_refused_then_closed(hub, protocol_name, level):
    """[v3 MQTT-3.1.2-2] [v5 MQTT-3.1.2-2] [v3 MQTT-3.2.2-4] [v3 MQTT-3.2.2-5]

    CONNACK 0x01 (v3.1.1's "unacceptable protocol level"; the v5 spec allows 0x84)
    with session present 0, then the connection is closed. iothub speaks levels
    4 and 5 only; other brokers may accept MQTT 3.1 (level 3).
    """
    if level == 3 and hub.external:
        pytest.skip("MQTT 3.1 support is a broker choice; iothub refuses it")
    client = raw.RawClient(hub.mqtt_addr)
    client.send(raw.connect("oldproto", version=level, protocol_name=protocol_name))
    pkt = client.read(5.0)
    if pkt is not None:
        assert pkt.type == raw.CONNACK, pkt
        assert pkt.body[0] == 0, "session present must be 0 on a refusal"
        assert pkt.body[1] in (0x01, 0x84), pkt
    assert client.closed_within(5.0)


@pytest.mark.parametrize(
    ("name", "version", "kwargs"),
    [
        ("reserved-flag-v311", 4, {"extra_flags": 0x01}),
        ("reserved-flag-v5", 5, {"extra_flags": 0x01}),
        ("will-qos-without-will-v311", 4, {"extra_flags": 0x08}),
        ("will-retain-without-will-v5", 5, {"extra_flags": 0x20}),
        ("will-qos-3-v311", 4, {"will": {"topic": "w", "qos": 3}}),
        ("password-without-username-v311", 4, {"extra_flags": 0x40}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_malformed_connect_is_not_accepted(hub, name, version, kwargs):
    """[v3 MQTT-3.1.2-3] [v3 MQTT-3.1.4-1] [v3 MQTT-3.1.2-11] [v3 MQTT-3.1.2-13] [v3 MQTT-3.1.2-14]
    [v3 MQTT-3.1.2-15] [v3 MQTT-3.1.2-22] [v5 MQTT-3.1.2-3] [v5 MQTT-3.1.4-1] [v5 MQTT-3.1.2-11]
    [v5 MQTT-3.1.2-13] [v5 MQTT-3.2.2-7] [v5 MQTT-3.2.2-8] [v5 MQTT-4.13.1-1]

    The server closes the connection and never accepts the session (no CONNACK 0x00).
    """
    client = raw.RawClient(hub.mqtt_addr)
    client.send(raw.connect(f"bad{version}", version=version, **kwargs))
    pkt = client.read(5.0)
    if pkt is not None:
        assert pkt.type == raw.CONNACK, pkt
        assert pkt.body[1] != 0, f"{name}: a malformed CONNECT was accepted"
        if version == 5:
            assert pkt.body[1] >= 0x80 and pkt.body[1] in CONNECT_REASON_CODES
    assert client.closed_within(5.0)


@BOTH
def test_second_connect_is_a_protocol_violation(hub, version):
    """[v3 MQTT-3.1.0-2] [v5 MQTT-3.1.0-2] [v3 MQTT-4.8.0-1] [v5 MQTT-4.13.1-1] [v5 MQTT-3.2.0-2] (no second CONNACK)"""
    client, connack = raw.open_session(hub.mqtt_addr, f"twice{version}", version=version)
    assert connack["code"] == 0
    client.send(raw.connect(f"twice{version}", version=version))
    pkt = client.read(5.0)
    if pkt is not None:
        assert version == V5 and pkt.type == raw.DISCONNECT and pkt.body[0] >= 0x80, pkt
    assert client.closed_within(5.0)


@BOTH
def test_connack_flag_bits_7_to_1_are_zero(hub, version):
    """[v5 MQTT-3.2.2-1] (v3.1.1 3.2.2.1 says the same without an id)"""
    for clean in (True, False):
        client, connack = raw.open_session(hub.mqtt_addr, f"flags{version}", version=version, clean=clean)
        assert connack["code"] == 0
        assert connack["flags"] & 0xFE == 0
        client.send(raw.disconnect())
        client.close()


@BOTH
def test_pingreq_gets_pingresp(hub, version):
    """[v3 MQTT-3.12.4-1] [v5 MQTT-3.12.4-1]"""
    client, _ = raw.open_session(hub.mqtt_addr, f"ping{version}", version=version)
    for _ in range(3):
        client.send(raw.frame(raw.PINGREQ << 4, b""))
        pkt = client.expect(raw.PINGRESP)
        assert pkt.flags == 0 and pkt.body == b""
    client.close()


@BOTH
def test_silent_client_is_closed_after_one_and_a_half_keep_alive(hub, peer, ns, version):
    """[v3 MQTT-3.1.2-24] [v5 MQTT-3.1.2-22] [v5 MQTT-3.2.2-22] [v3 MQTT-3.1.2-8]

    Keep alive 1 s and then silence: the server closes the connection "as if the
    network had failed", so the will is published.
    """
    watcher = peer(hub, "watch", version=version)
    watcher.subscribe(f"{ns}/ka-will", qos=1)
    will = {"topic": f"{ns}/ka-will", "payload": b"gone", "qos": 1}
    client, connack = raw.open_session(hub.mqtt_addr, f"silent{version}", version=version, keepalive=1, will=will)
    assert connack["code"] == 0
    assert client.closed_within(10.0), "connection still open long after 1.5 x keep alive"
    assert watcher.expect(topic=f"{ns}/ka-will").payload == b"gone"


@BOTH
def test_takeover_closes_the_old_connection(hub, peer, ns, version):
    """[v3 MQTT-3.1.4-2] [v5 MQTT-3.1.4-3] [v5 MQTT-3.14.0-1]

    v5: the old connection receives DISCONNECT 0x8E (session taken over) before it is closed.
    """
    old = peer(hub, "dup", version=version)
    new = peer(hub, "dup", version=version)
    ended = old.wait_disconnected()
    if version == V5:
        assert ended.from_server_packet, "v5 client must get a DISCONNECT packet on takeover"
        assert ended.reason_code == 0x8E
    assert new.is_connected()
    new.subscribe(f"{ns}/after", qos=1)
    new.publish(f"{ns}/after", b"ok", qos=1)
    assert new.expect(topic=f"{ns}/after").payload == b"ok"


def test_v5_connack_has_no_response_information_or_auth_method_unless_asked(hub):
    """[v5 MQTT-3.1.2-28] [v5 MQTT-4.12.0-6]"""
    client, connack = raw.open_session(hub.mqtt_addr, "noresp", version=5)
    assert connack["code"] == 0
    assert 0x1A not in connack["props"], "Response Information sent although not requested"
    assert 0x15 not in connack["props"], "Authentication Method sent although the client named none"
    client.close()


def test_v5_unknown_authentication_method_is_refused(hub):
    """[v5 MQTT-4.12.0-1] [v5 MQTT-3.2.2-6] [v5 MQTT-3.2.2-7] [v5 MQTT-4.13.2-1]

    iothub supports no enhanced authentication: CONNACK 0x8C (or 0x87), then close.
    """
    client = raw.RawClient(hub.mqtt_addr)
    client.send(raw.connect("authx", version=5, props=[(0x15, "SCRAM-SHA-1")]))
    pkt = client.read(5.0)
    if pkt is not None:
        fields = raw.connack_fields(pkt, 5)
        assert fields["code"] in (0x8C, 0x87), fields
        assert fields["flags"] == 0
    assert client.closed_within(5.0)


def test_v5_server_keep_alive_caps_a_too_long_keep_alive(hub_with):
    """[v5 MQTT-3.2.2-21] iothub-specific: max_keep_alive_secs=30 announces Server Keep Alive <= 30."""
    hub = hub_with(limits={"max_keep_alive_secs": 30})
    client, connack = raw.open_session(hub.mqtt_addr, "longka", version=5, keepalive=600)
    assert connack["code"] == 0
    assert connack["props"].get(raw.SERVER_KEEP_ALIVE, [None])[0] is not None
    assert 0 < connack["props"][raw.SERVER_KEEP_ALIVE][0] <= 30
    client.close()


def test_v311_disconnect_with_reserved_bits_is_a_violation(hub, peer, ns):
    """[v3 MQTT-3.14.1-1] [v3 MQTT-2.2.2-2]: the server disconnects the client; as no valid
    DISCONNECT was received, the will is published.
    """
    watcher = peer(hub, "watch", version=V311)
    watcher.subscribe(f"{ns}/will", qos=1)
    client, connack = raw.open_session(hub.mqtt_addr, "baddisc", version=4, will={"topic": f"{ns}/will", "payload": b"w"})
    assert connack["code"] == 0
    client.send(raw.frame((raw.DISCONNECT << 4) | 0x01, b""))
    assert client.closed_within(5.0)
    assert watcher.expect(topic=f"{ns}/will").payload == b"w"
