"""MQTT 5 features: user properties, request/response, content type, payload format,
message expiry, subscription identifiers, topic aliases, no local, maximum packet size.

All ids here are MQTT 5.0 statements (``[v5 ...]``).
"""

from __future__ import annotations

import time

import pytest

import raw


def test_user_properties_are_forwarded_unaltered_and_in_order(hub, peer, ns):
    """[v5 MQTT-3.3.2-17] [v5 MQTT-3.3.2-18]"""
    topic = f"{ns}/up"
    sub = peer(hub, "sub")
    sub.subscribe(topic, qos=1)
    pub = peer(hub, "pub")
    user = [("z", "last?"), ("a", "1"), ("z", "again"), ("ünï", "cødé"), ("empty", ""), ("a", "1")]
    pub.publish(topic, b"x", qos=1, props={"UserProperty": user})
    assert sub.expect(topic=topic).user_properties == user


def test_request_response_properties_are_forwarded_unaltered(hub, peer, ns):
    """[v5 MQTT-3.3.2-15] [v5 MQTT-3.3.2-16]

    A responder reads Response Topic and Correlation Data from the request and
    answers there; the requester matches the answer by its correlation data.
    """
    requests, replies = f"{ns}/req", f"{ns}/reply/requester"
    responder = peer(hub, "responder")
    responder.subscribe(requests, qos=1)
    requester = peer(hub, "requester")
    requester.subscribe(replies, qos=1)
    correlation = bytes(range(256))
    requester.publish(requests, b"ping", qos=1, props={"ResponseTopic": replies, "CorrelationData": correlation})
    request = responder.expect(topic=requests)
    assert request.response_topic == replies
    assert request.correlation_data == correlation
    responder.publish(request.response_topic, b"pong", qos=1, props={"CorrelationData": request.correlation_data})
    reply = requester.expect(topic=replies)
    assert (reply.payload, reply.correlation_data) == (b"pong", correlation)


def test_content_type_and_payload_format_indicator_are_forwarded(hub, peer, ns):
    """[v5 MQTT-3.3.2-4] [v5 MQTT-3.3.2-20]"""
    topic = f"{ns}/ct"
    sub = peer(hub, "sub")
    sub.subscribe(topic, qos=1)
    pub = peer(hub, "pub")
    pub.publish(topic, "héllo".encode(), qos=1, props={"ContentType": "text/plain; charset=utf-8", "PayloadFormatIndicator": 1})
    pub.publish(topic, b"\x00\xff", qos=1, props={"ContentType": "application/octet-stream", "PayloadFormatIndicator": 0})
    first, second = sub.expect_n(2)
    assert (first.content_type, first.payload_format_indicator) == ("text/plain; charset=utf-8", 1)
    assert (second.content_type, second.payload_format_indicator) == ("application/octet-stream", 0)


def test_message_expiry_is_reduced_by_the_time_spent_queued(hub, peer, ns):
    """[v5 MQTT-3.3.2-6] [v5 MQTT-4.5.0-1]

    A message queued for an offline session for more than a second is forwarded
    with a Message Expiry Interval lower than the one it was published with.
    """
    topic = f"{ns}/exp"
    sub = peer(hub, "sub", clean=False, session_expiry=300)
    sub.subscribe(topic, qos=1)
    sub.disconnect()
    pub = peer(hub, "pub")
    pub.publish(topic, b"ttl", qos=1, props={"MessageExpiryInterval": 60})
    time.sleep(2.2)  # let the message age in the queue; the assertion is on the property, not on time
    back = peer(hub, "sub", clean=False, session_expiry=300)
    msg = back.expect(topic=topic)
    assert msg.payload == b"ttl"
    assert msg.message_expiry_interval is not None
    assert msg.message_expiry_interval <= 58


def test_expired_message_is_not_delivered_to_offline_session(hub, peer, ns):
    """[v5 MQTT-3.3.2-5]"""
    topic = f"{ns}/exp"
    sub = peer(hub, "sub", clean=False, session_expiry=300)
    sub.subscribe(topic, qos=1)
    sub.disconnect()
    pub = peer(hub, "pub")
    pub.publish(topic, b"short", qos=1, props={"MessageExpiryInterval": 1})
    pub.publish(topic, b"long", qos=1, props={"MessageExpiryInterval": 600})
    time.sleep(2.5)  # past the 1 s expiry
    back = peer(hub, "sub", clean=False, session_expiry=300)
    assert back.expect(topic=topic).payload == b"long"
    back.expect_none(topic=topic)


def test_expired_retained_message_is_not_sent_to_new_subscribers(hub, peer, ns):
    """MQTT 5.0 3.3.2.3.3: a retained message whose expiry has passed is no longer delivered."""
    topic = f"{ns}/exp-retained"
    pub = peer(hub, "pub")
    pub.publish(topic, b"stale", qos=1, retain=True, props={"MessageExpiryInterval": 1})
    time.sleep(2.5)
    sub = peer(hub, "sub")
    sub.subscribe(topic, qos=1)
    sub.expect_none(topic=topic)


def test_subscription_identifier_is_returned_with_matching_messages(hub, peer, ns):
    """[v5 MQTT-3.3.4-3] [v5 MQTT-3.3.4-4] [v5 MQTT-3.3.4-5] [v5 MQTT-3.8.4-3]"""
    sub = peer(hub, "sub")
    sub.subscribe(f"{ns}/a/+", qos=1, sub_id=7)
    sub.subscribe(f"{ns}/a/#", qos=1, sub_id=268435455)
    sub.subscribe(f"{ns}/b", qos=1)
    pub = peer(hub, "pub")

    pub.publish(f"{ns}/a/x", b"both", qos=1)
    ids: list[int] = []
    copies = [sub.expect(topic=f"{ns}/a/x")]
    sub_ids_first = copies[0].subscription_identifiers
    if len(sub_ids_first) == 1:  # the server chose one copy per subscription
        copies.append(sub.expect(topic=f"{ns}/a/x"))
    for copy in copies:
        ids.extend(copy.subscription_identifiers)
    assert sorted(ids) == [7, 268435455]

    pub.publish(f"{ns}/b", b"none", qos=1)
    assert sub.expect(topic=f"{ns}/b").subscription_identifiers == []

    # Replacing the subscription replaces its identifier.
    sub.subscribe(f"{ns}/a/+", qos=1, sub_id=9)
    pub.publish(f"{ns}/a/y/z", b"deep", qos=1)
    assert sub.expect(topic=f"{ns}/a/y/z").subscription_identifiers == [268435455]
    sub.unsubscribe(f"{ns}/a/#")
    pub.publish(f"{ns}/a/y", b"one", qos=1)
    assert sub.expect(topic=f"{ns}/a/y").subscription_identifiers == [9]


def test_topic_alias_from_client_is_resolved(hub, peer, ns):
    """[v5 MQTT-3.3.2-12] [v5 MQTT-3.2.2-17]"""
    topic = f"{ns}/alias/long/topic/name"
    sub = peer(hub, "sub")
    sub.subscribe(topic, qos=1)
    pub = peer(hub, "pub")
    maximum = pub.connack.properties.get("TopicAliasMaximum", 0)
    assert maximum >= 1, "iothub announces a Topic Alias Maximum (default 64)"
    pub.publish(topic, b"set", qos=1, props={"TopicAlias": 1})
    pub.publish("", b"use", qos=1, props={"TopicAlias": 1})
    pub.publish("", b"again", qos=0, props={"TopicAlias": 1})
    got = sub.expect_n(3)
    assert [(m.topic, m.payload) for m in got] == [(topic, b"set"), (topic, b"use"), (topic, b"again")]


def _alias_publisher(hub, client_id: str) -> raw.RawClient:
    client, connack = raw.open_session(hub.mqtt_addr, client_id, version=5)
    assert connack["code"] == 0
    return client


def test_topic_alias_above_maximum_or_zero_is_a_protocol_error(hub, ns):
    """[v5 MQTT-3.2.2-17] [v5 MQTT-3.3.2-8] [v5 MQTT-4.13.1-1] (DISCONNECT 0x94 Topic Alias invalid)"""
    for alias in (0, 65535):
        client = _alias_publisher(hub, f"badalias{alias}")
        client.send(raw.publish(f"{ns}/x", b"x", qos=0, version=5, props=[(raw.TOPIC_ALIAS, alias)]))
        pkt = client.packet_within(5.0)
        if pkt is not None:
            # 0x94 (Topic Alias invalid) is the code for an alias above the maximum; for
            # alias 0 the spec names no code, so malformed/protocol error are accepted too.
            allowed = (0x94,) if alias else (0x81, 0x82, 0x94)
            assert pkt.type == raw.DISCONNECT and pkt.body[0] in allowed, pkt
        assert client.closed_within(5.0)


def test_topic_alias_mapping_does_not_survive_reconnect(hub, ns):
    """[v5 MQTT-3.3.2-7]"""
    first = _alias_publisher(hub, "aliasreuse")
    first.send(raw.publish(f"{ns}/aliased", b"x", qos=1, packet_id=1, version=5, props=[(raw.TOPIC_ALIAS, 3)]))
    first.expect(raw.PUBACK)
    first.send(raw.disconnect())
    first.close()
    second = _alias_publisher(hub, "aliasreuse")
    second.send(raw.publish(b"", b"x", qos=1, packet_id=2, version=5, props=[(raw.TOPIC_ALIAS, 3)]))
    pkt = second.packet_within(5.0)
    if pkt is not None:
        assert pkt.type == raw.DISCONNECT and pkt.body[0] >= 0x80, f"unknown alias accepted: {pkt}"
    assert second.closed_within(5.0)


def _raw_subscriber(hub, client_id: str, topic: str, props=None) -> raw.RawClient:
    client, connack = raw.open_session(hub.mqtt_addr, client_id, version=5, props=props)
    assert connack["code"] == 0
    client.send(raw.subscribe(1, [(topic, 1)], version=5))
    client.expect(raw.SUBACK)
    return client


def test_server_sends_no_topic_alias_when_client_allows_none(hub, peer, ns):
    """[v5 MQTT-3.1.2-27] [v5 MQTT-3.1.2-26] [v5 MQTT-3.3.2-11]"""
    none_allowed = _raw_subscriber(hub, "noalias", f"{ns}/#")
    two_allowed = _raw_subscriber(hub, "twoalias", f"{ns}/#", props=[(raw.TOPIC_ALIAS_MAXIMUM, 2)])
    pub = peer(hub, "pub")
    for round_ in range(2):
        for index in range(5):
            pub.publish(f"{ns}/t{index}", b"%d" % round_, qos=1)
    for _ in range(10):
        fields = none_allowed.expect(raw.PUBLISH).publish_fields(5)
        none_allowed.send(raw.ack(raw.PUBACK, fields["packet_id"]))
        assert raw.TOPIC_ALIAS not in fields["props"]
        assert fields["topic"], "a topic name is required without an alias"
    for _ in range(10):
        fields = two_allowed.expect(raw.PUBLISH).publish_fields(5)
        two_allowed.send(raw.ack(raw.PUBACK, fields["packet_id"]))
        for alias in fields["props"].get(raw.TOPIC_ALIAS, []):
            assert 1 <= alias <= 2


def test_no_local_does_not_echo_own_messages(hub, peer, ns):
    """[v5 MQTT-3.8.3-3]"""
    topic = f"{ns}/chat"
    me = peer(hub, "me")
    me.subscribe(topic, qos=1, no_local=True)
    me.publish(topic, b"mine", qos=1)
    other = peer(hub, "other")
    other.publish(topic, b"theirs", qos=1)
    msg = me.expect(topic=topic)
    assert msg.payload == b"theirs"
    me.expect_none(topic=topic)


def test_no_local_on_shared_subscription_is_a_protocol_error(hub, ns):
    """[v5 MQTT-3.8.3-4] [v5 MQTT-4.13.1-1]"""
    client, connack = raw.open_session(hub.mqtt_addr, "sharednl", version=5)
    assert connack["code"] == 0
    client.send(raw.subscribe(1, [(f"$share/g/{ns}/t", 0x05)], version=5))  # QoS 1 + No Local
    pkt = client.packet_within(5.0)
    if pkt is not None:
        assert pkt.type == raw.DISCONNECT and pkt.body[0] == 0x82, f"expected DISCONNECT 0x82, got {pkt}"
    assert client.closed_within(5.0)


def test_server_never_sends_packets_above_client_maximum_packet_size(hub, peer, ns):
    """[v5 MQTT-3.1.2-24] [v5 MQTT-3.1.2-25]

    A message too large for the subscriber is skipped (as if sent); smaller ones
    still arrive and the connection stays up.
    """
    topic = f"{ns}/big"
    small = peer(hub, "small", connect_props={"MaximumPacketSize": 256})
    small.subscribe(topic, qos=1)
    pub = peer(hub, "pub")
    pub.publish(topic, b"a" * 1000, qos=1)
    pub.publish(topic, b"fits", qos=1)
    msg = small.expect(topic=topic)
    assert msg.payload == b"fits"
    small.expect_none(topic=topic)
    assert small.is_connected()


BAD_PROPERTIES = [
    ("user-property-invalid-utf8", b"\x26" + raw.utf8(b"\xff\xfe") + raw.utf8("v")),
    ("user-property-value-nul", b"\x26" + raw.utf8("k") + raw.utf8(b"a\x00b")),
    ("response-topic-invalid-utf8", b"\x08" + raw.utf8(b"\xc3\x28")),
    ("response-topic-wildcard", b"\x08" + raw.utf8("reply/+")),
    ("content-type-invalid-utf8", b"\x03" + raw.utf8(b"\xed\xa0\x80")),
]


@pytest.mark.parametrize(("name", "encoded"), BAD_PROPERTIES, ids=[b[0] for b in BAD_PROPERTIES])
def test_malformed_publish_property_closes_the_connection(hub, ns, name, encoded):
    """[v5 MQTT-1.5.7-1] [v5 MQTT-1.5.4-1] [v5 MQTT-1.5.4-2] [v5 MQTT-3.3.2-13] [v5 MQTT-3.3.2-14]
    [v5 MQTT-3.3.2-19] [v5 MQTT-4.13.1-1]: DISCONNECT 0x81/0x82 (or a plain close); nothing forwarded.
    """
    watcher, _ = raw.open_session(hub.mqtt_addr, "propwatch", version=5)
    watcher.send(raw.subscribe(1, [(f"{ns}/#", 0)], version=5))
    watcher.expect(raw.SUBACK)
    client, connack = raw.open_session(hub.mqtt_addr, "badprop", version=5)
    assert connack["code"] == 0
    body = raw.utf8(f"{ns}/t") + raw.varint(len(encoded)) + encoded + b"payload"
    client.send(raw.frame(raw.PUBLISH << 4, body))
    pkt = client.packet_within(5.0)
    if pkt is not None:
        assert pkt.type == raw.DISCONNECT and pkt.body[0] in (0x81, 0x82), f"{name}: {pkt}"
    assert client.closed_within(5.0), f"{name}: connection left open"
    assert watcher.packet_within(0.5) is None, f"{name}: the malformed message was forwarded"
