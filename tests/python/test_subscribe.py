"""SUBSCRIBE / UNSUBSCRIBE: topic matching, $-topics, overlapping subscriptions, SUBACK
and UNSUBACK codes.

``[v3 ...]`` ids are MQTT 3.1.1 statements, ``[v5 ...]`` ids MQTT 5.0 statements.
"""

from __future__ import annotations

import uuid

import pytest

import raw
from clients import V5, V311

BOTH = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])

# (filter, topics that must match, topics that must not). "{ns}" is a per-test prefix;
# "{u}" a per-test word for the cases that need a wildcard in the first level.
MATCHING = [
    ("{ns}/sport/tennis/player1/#", ["{ns}/sport/tennis/player1", "{ns}/sport/tennis/player1/ranking",
                                     "{ns}/sport/tennis/player1/score/wimbledon"], ["{ns}/sport/tennis/player2"]),
    ("{ns}/sport/#", ["{ns}/sport", "{ns}/sport/x/y"], ["{ns}/sports"]),
    ("{ns}/sport/tennis/+", ["{ns}/sport/tennis/player1", "{ns}/sport/tennis/"],
     ["{ns}/sport/tennis/player1/ranking", "{ns}/sport/tennis"]),
    ("{ns}/sport/+", ["{ns}/sport/"], ["{ns}/sport"]),
    ("{ns}/+/tennis/#", ["{ns}/sport/tennis", "{ns}/x/tennis/y/z"], ["{ns}/sport/golf"]),
    ("{ns}/+/+", ["{ns}//{u}", "{ns}/a/b"], ["{ns}/a", "{ns}/a/b/c"]),
    ("+/{u}", ["/{u}"], ["{u}", "x/y/{u}"]),
    ("/+", ["/{u}"], []),
    ("{ns}/ACCOUNTS", ["{ns}/ACCOUNTS"], ["{ns}/Accounts", "{ns}/accounts"]),
    ("{ns}/Accounts payable", ["{ns}/Accounts payable"], ["{ns}/Accounts"]),
    ("{ns}/\u00c5", ["{ns}/\u00c5"], ["{ns}/A\u030a"]),
    ("{ns}/A\u030a", ["{ns}/A\u030a"], ["{ns}/\u00c5"]),
    ("{ns}/finance", ["{ns}/finance"], ["{ns}//finance", "{ns}/finance/"]),
]


@pytest.mark.parametrize(("pattern", "hits", "misses"), MATCHING, ids=[m[0] for m in MATCHING])
def test_topic_filter_matching(hub, peer, ns, pattern, hits, misses):
    """[v3 MQTT-4.7.1-2] [v3 MQTT-4.7.1-3] [v3 MQTT-4.7.3-4] [v3 MQTT-3.3.2-3] [v3 MQTT-4.7.3-1]
    [v5 MQTT-4.7.1-1] [v5 MQTT-4.7.1-2] [v5 MQTT-4.7.3-4] [v5 MQTT-3.3.2-3] [v5 MQTT-4.7.3-1]
    """
    word = uuid.uuid4().hex[:10]
    fill = lambda text: text.replace("{ns}", ns).replace("{u}", word)  # noqa: E731
    sub = peer(hub, "sub")
    assert sub.subscribe(fill(pattern), qos=1) == [1]
    pub = peer(hub, "pub")
    expected = [fill(t) for t in hits]
    unexpected = [fill(t) for t in misses]
    for topic in expected + unexpected:
        pub.publish(topic, topic.encode(), qos=1)
    got = set()
    while len(got) < len(expected):
        msg = sub.expect()
        if msg.topic in expected or msg.topic in unexpected:
            assert msg.payload == msg.topic.encode()
            got.add(msg.topic)
    assert got == set(expected)
    for topic in unexpected:
        sub.expect_none(topic=topic, timeout=0.1)
    if not hub.external:  # a shared broker may carry other tests' traffic on root-level filters
        sub.expect_none(timeout=0.3)


def test_wildcards_at_first_level_do_not_match_dollar_topics(hub, peer, ns):
    """[v3 MQTT-4.7.2-1] [v5 MQTT-4.7.2-1]"""
    word = uuid.uuid4().hex[:10]
    dollar = f"$e2e{word}/status"
    everything = peer(hub, "all")
    everything.subscribe("#", qos=1)
    plus = peer(hub, "plus")
    plus.subscribe("+/status", qos=1)
    explicit = peer(hub, "explicit")
    explicit.subscribe(f"$e2e{word}/#", qos=1)
    pub = peer(hub, "pub")
    pub.publish(dollar, b"d", qos=1)
    pub.publish(f"{ns}/normal", b"n", qos=1)
    assert everything.expect(topic=f"{ns}/normal").payload == b"n"
    for client in (everything, plus):
        while True:
            try:
                msg = client.messages.get(timeout=0.5)
            except Exception:  # noqa: BLE001 - queue.Empty: nothing more arrived
                break
            assert not msg.topic.startswith("$"), f"{msg.topic} matched a filter starting with a wildcard"


@BOTH
def test_overlapping_subscriptions_deliver_with_maximum_qos(hub, peer, ns, version):
    """[v3 MQTT-3.3.5-1] [v5 MQTT-3.3.4-2]"""
    sub = peer(hub, "sub", version=version)
    sub.subscribe(f"{ns}/a/#", qos=2)
    sub.subscribe(f"{ns}/a/b", qos=0)
    pub = peer(hub, "pub", version=version)
    pub.publish(f"{ns}/a/b", b"x", qos=2)
    copies = [sub.expect(topic=f"{ns}/a/b")]
    try:
        copies.append(sub.expect(topic=f"{ns}/a/b", timeout=0.5))
    except AssertionError:
        pass  # one copy is the usual answer; one per subscription is allowed too
    assert max(c.qos for c in copies) == 2
    sub.expect_none(topic=f"{ns}/a/b")


@BOTH
def test_subscribe_with_several_filters_answers_each_in_order(hub, peer, ns, version):
    """[v3 MQTT-3.8.4-4] [v3 MQTT-3.8.4-5] [v3 MQTT-3.9.3-1] [v3 MQTT-3.9.3-2] [v5 MQTT-3.8.4-5]
    [v5 MQTT-3.8.4-6] [v5 MQTT-3.8.4-7] [v5 MQTT-3.9.3-1] [v5 MQTT-3.9.3-2]
    """
    sub = peer(hub, "sub", version=version)
    filters = [(f"{ns}/two", 2), (f"{ns}/zero", 0), (f"{ns}/one/#", 1)]
    assert sub.subscribe_many(filters) == [2, 0, 1]
    pub = peer(hub, "pub", version=version)
    pub.publish(f"{ns}/one/x", b"1", qos=2)
    assert sub.expect(topic=f"{ns}/one/x").qos == 1


@BOTH
def test_invalid_filter_is_refused_without_affecting_the_others(hub, ns, version):
    """[v3 MQTT-4.7.1-2] [v3 MQTT-4.7.1-3] [v3 MQTT-3.9.3-1] [v5 MQTT-4.7.1-1] [v5 MQTT-4.7.1-2]
    [v5 MQTT-3.9.3-1] [v5 MQTT-3.8.4-7]

    "a/#/b", "a+" and "#a" are not valid filters: the SUBACK return code for each is
    a failure (0x80, or v5 0x8F), or the server closes the connection.
    """
    for bad in (f"{ns}/#/b", f"{ns}/a+", f"{ns}/#a"):
        client, connack = raw.open_session(hub.mqtt_addr, f"badflt{version}", version=version)
        assert connack["code"] == 0
        client.send(raw.subscribe(3, [(f"{ns}/ok", 1), (bad, 1), (f"{ns}/ok2", 0)], version=version))
        pkt = client.packet_within(5.0)
        if pkt is None:
            assert client.closed_within(1.0)
            continue
        if pkt.type == raw.DISCONNECT:
            assert version == V5 and pkt.body[0] >= 0x80
            assert client.closed_within(5.0)
            continue
        assert pkt.type == raw.SUBACK and pkt.packet_id() == 3, pkt
        codes = list(pkt.body[3:]) if version == V5 else list(pkt.body[2:])
        if version == V5:
            _, pos = raw.decode_props(pkt.body, 2)
            codes = list(pkt.body[pos:])
        assert codes[0] == 1 and codes[2] == 0 and codes[1] >= 0x80, codes
        client.close()


@BOTH
def test_unsubscribe_stops_delivery_and_answers_every_filter(hub, peer, ns, version):
    """[v3 MQTT-3.10.4-1] [v3 MQTT-3.10.4-2] [v3 MQTT-3.10.4-4] [v3 MQTT-3.10.4-5] [v3 MQTT-3.10.4-6]
    [v5 MQTT-3.10.4-1] [v5 MQTT-3.10.4-2] [v5 MQTT-3.10.4-4] [v5 MQTT-3.10.4-5] [v5 MQTT-3.10.4-6]
    [v5 MQTT-3.11.3-1] [v5 MQTT-3.11.3-2]
    """
    sub = peer(hub, "sub", version=version)
    sub.subscribe(f"{ns}/a", qos=1)
    sub.subscribe(f"{ns}/b/+", qos=1)
    sub.subscribe(f"{ns}/c", qos=1)
    codes = sub.unsubscribe(f"{ns}/a", f"{ns}/never", f"{ns}/b/+")
    if version == V5:
        assert codes == [0x00, 0x11, 0x00]
    assert sub.unsubscribe(f"{ns}/nothing") in ([], [0x11])
    pub = peer(hub, "pub", version=version)
    for topic in (f"{ns}/a", f"{ns}/b/x", f"{ns}/c"):
        pub.publish(topic, b"x", qos=1)
    assert sub.expect().topic == f"{ns}/c"
    sub.expect_none()


@BOTH
def test_unsubscribe_compares_filters_literally(hub, peer, ns, version):
    """[v3 MQTT-3.10.4-1] [v5 MQTT-3.10.4-1]: unsubscribing "x" does not remove "#"."""
    sub = peer(hub, "sub", version=version)
    sub.subscribe(f"{ns}/#", qos=1)
    codes = sub.unsubscribe(f"{ns}/x")
    if version == V5:
        assert codes == [0x11]
    pub = peer(hub, "pub", version=version)
    pub.publish(f"{ns}/x", b"still", qos=1)
    assert sub.expect(topic=f"{ns}/x").payload == b"still"


@BOTH
def test_wildcard_in_publish_topic_is_refused(hub, ns, version):
    """[v3 MQTT-3.3.2-2] [v3 MQTT-4.7.1-1] [v5 MQTT-3.3.2-2] [v5 MQTT-4.7.0-1] [v3 MQTT-4.8.0-1] [v5 MQTT-4.13.1-1]"""
    watcher, _ = raw.open_session(hub.mqtt_addr, f"wcwatch{version}", version=version)
    watcher.send(raw.subscribe(1, [(f"{ns}/#", 1)], version=version))
    watcher.expect(raw.SUBACK)
    for topic in (f"{ns}/+", f"{ns}/#", f"{ns}/a+b"):
        client, _ = raw.open_session(hub.mqtt_addr, f"wcpub{version}", version=version)
        client.send(raw.publish(topic, b"x", qos=1, packet_id=1, version=version))
        pkt = client.packet_within(5.0)
        if pkt is not None:
            assert pkt.type == raw.DISCONNECT and pkt.body[0] >= 0x80, f"{topic}: {pkt}"
        assert client.closed_within(5.0), f"{topic}: a wildcard topic name was accepted"
    assert watcher.packet_within(0.5) is None, "a PUBLISH with a wildcard topic name was forwarded"


@BOTH
def test_longest_topic_name_and_filter_work(hub, ns, version):
    """[v3 MQTT-4.7.3-3] [v5 MQTT-4.7.3-3]: a 65535-byte topic (the most a length prefix can say)."""
    topic = (ns + "/" + "x" * 65535)[:65535]
    sub, _ = raw.open_session(hub.mqtt_addr, f"longsub{version}", version=version)
    sub.send(raw.subscribe(1, [(topic, 1)], version=version))
    suback = sub.expect(raw.SUBACK)
    assert suback.body[-1] == 1, suback
    pub, _ = raw.open_session(hub.mqtt_addr, f"longpub{version}", version=version)
    pub.send(raw.publish(topic, b"long", qos=1, packet_id=2, version=version))
    pub.expect(raw.PUBACK)
    delivery = sub.expect(raw.PUBLISH).publish_fields(version)
    assert (delivery["topic"], delivery["payload"]) == (topic, b"long")
