"""Retained messages: store, replace, delete, RETAIN flag on delivery, retain handling, retain as published.

``[v3 ...]`` ids are MQTT 3.1.1 statements, ``[v5 ...]`` ids MQTT 5.0 statements.
"""

from __future__ import annotations

import pytest

from clients import V5, V311

BOTH = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


@BOTH
def test_retained_message_is_sent_to_new_subscribers_with_retain_flag(hub, peer, ns, version):
    """[v3 MQTT-3.3.1-5] [v3 MQTT-3.3.1-6] [v3 MQTT-3.3.1-8] [v3 MQTT-3.1.2-7]
    [v5 MQTT-3.3.1-5] [v5 MQTT-3.3.1-9]

    The publisher has gone (its clean session ended); the retained message stays.
    """
    topic = f"{ns}/state"
    pub = peer(hub, "pub", version=version)
    pub.publish(topic, b"on", qos=1, retain=True)
    pub.disconnect()
    for name in ("sub1", "sub2"):
        sub = peer(hub, name, version=version)
        sub.subscribe(topic, qos=1)
        msg = sub.expect(topic=topic)
        assert (msg.payload, msg.retain, msg.qos) == (b"on", True, 1)
        sub.expect_none(topic=topic)


@BOTH
def test_retained_message_is_replaced_and_its_qos_is_kept(hub, peer, ns, version):
    """[v3 MQTT-3.3.1-5] [v3 MQTT-3.3.1-7] [v5 MQTT-3.3.1-5] [v3 MQTT-3.8.4-6] [v5 MQTT-3.8.4-8]

    A newer retained message replaces the older one (also at QoS 0), and it is
    delivered at min(its own QoS, granted QoS).
    """
    topic = f"{ns}/level"
    pub = peer(hub, "pub", version=version)
    pub.publish(topic, b"old", qos=2, retain=True)
    pub.publish(topic, b"new", qos=0, retain=True)
    sub = peer(hub, "sub", version=version)
    sub.subscribe(topic, qos=2)
    msg = sub.expect(topic=topic)
    assert (msg.payload, msg.qos, msg.retain) == (b"new", 0, True)
    sub.expect_none(topic=topic)

    pub.publish(topic, b"newest", qos=2, retain=True)
    sub.expect(topic=topic)  # live copy
    low = peer(hub, "low", version=version)
    low.subscribe(topic, qos=1)
    msg = low.expect(topic=topic)
    assert (msg.payload, msg.qos, msg.retain) == (b"newest", 1, True)


@BOTH
def test_empty_retained_message_deletes_and_is_still_forwarded(hub, peer, ns, version):
    """[v3 MQTT-3.3.1-10] [v3 MQTT-3.3.1-11] [v5 MQTT-3.3.1-6] [v5 MQTT-3.3.1-7]"""
    topic = f"{ns}/gone"
    live = peer(hub, "live", version=version)
    pub = peer(hub, "pub", version=version)
    pub.publish(topic, b"x", qos=1, retain=True)
    live.subscribe(topic, qos=1)
    assert live.expect(topic=topic).payload == b"x"
    pub.publish(topic, b"", qos=1, retain=True)
    forwarded = live.expect(topic=topic)
    assert forwarded.payload == b""
    later = peer(hub, "later", version=version)
    later.subscribe(topic, qos=1)
    later.expect_none(topic=topic)


@BOTH
def test_non_retained_publish_neither_stores_nor_replaces(hub, peer, ns, version):
    """[v3 MQTT-3.3.1-12] [v5 MQTT-3.3.1-8]"""
    topic = f"{ns}/keep"
    pub = peer(hub, "pub", version=version)
    pub.publish(topic, b"retained", qos=1, retain=True)
    pub.publish(topic, b"transient", qos=1, retain=False)
    pub.publish(f"{ns}/never", b"transient", qos=1, retain=False)
    sub = peer(hub, "sub", version=version)
    sub.subscribe(f"{ns}/#", qos=1)
    msg = sub.expect()
    assert (msg.topic, msg.payload) == (topic, b"retained")
    sub.expect_none()


@BOTH
def test_live_delivery_clears_retain_flag(hub, peer, ns, version):
    """[v3 MQTT-3.3.1-9] [v5 MQTT-3.3.1-12]

    A retained message that matches an established subscription is forwarded with
    RETAIN 0 (v5: Retain As Published 0).
    """
    topic = f"{ns}/live"
    sub = peer(hub, "sub", version=version)
    sub.subscribe(topic, qos=1)
    pub = peer(hub, "pub", version=version)
    pub.publish(topic, b"r", qos=1, retain=True)
    msg = sub.expect(topic=topic)
    assert msg.retain is False


def test_v5_retain_as_published_keeps_retain_flag(hub, peer, ns):
    """[v5 MQTT-3.3.1-13] [v5 MQTT-3.3.1-12]"""
    topic = f"{ns}/rap"
    keep = peer(hub, "keep")
    keep.subscribe(topic, qos=1, retain_as_published=True)
    clear = peer(hub, "clear")
    clear.subscribe(topic, qos=1, retain_as_published=False)
    pub = peer(hub, "pub")
    pub.publish(topic, b"retained", qos=1, retain=True)
    pub.publish(topic, b"plain", qos=1, retain=False)
    assert [(m.payload, m.retain) for m in keep.expect_n(2)] == [(b"retained", True), (b"plain", False)]
    assert [(m.payload, m.retain) for m in clear.expect_n(2)] == [(b"retained", False), (b"plain", False)]


@pytest.mark.parametrize(
    ("retain_handling", "on_first", "on_repeat"),
    [(0, True, True), (1, True, False), (2, False, False)],
    ids=["rh0-always", "rh1-new-only", "rh2-never"],
)
def test_v5_retain_handling(hub, peer, ns, retain_handling, on_first, on_repeat):
    """[v5 MQTT-3.3.1-9] [v5 MQTT-3.3.1-10] [v5 MQTT-3.3.1-11] [v5 MQTT-3.8.4-4]"""
    topic = f"{ns}/rh"
    pub = peer(hub, "pub")
    pub.publish(topic, b"retained", qos=1, retain=True)
    sub = peer(hub, "sub")
    for expected in (on_first, on_repeat):
        assert sub.subscribe(topic, qos=1, retain_handling=retain_handling) == [1]
        if expected:
            msg = sub.expect(topic=topic)
            assert (msg.payload, msg.retain) == (b"retained", True)
        sub.expect_none(topic=topic)


@BOTH
def test_wildcard_subscription_gets_every_matching_retained_message(hub, peer, ns, version):
    """[v3 MQTT-3.3.1-6] [v5 MQTT-3.3.1-9] [v3 MQTT-3.3.2-3] [v5 MQTT-3.3.2-3]"""
    pub = peer(hub, "pub", version=version)
    topics = [f"{ns}/house/{room}/temp" for room in ("kitchen", "hall", "attic")]
    for index, topic in enumerate(topics):
        pub.publish(topic, str(index).encode(), qos=1, retain=True)
    pub.publish(f"{ns}/house/kitchen/humidity", b"h", qos=1, retain=True)
    sub = peer(hub, "sub", version=version)
    sub.subscribe(f"{ns}/house/+/temp", qos=1)
    got = {m.topic: m.payload for m in sub.expect_n(3)}
    assert got == {topic: str(index).encode() for index, topic in enumerate(topics)}
    sub.expect_none()


@BOTH
def test_identical_subscription_replaces_and_resends_retained(hub, peer, ns, version):
    """[v3 MQTT-3.8.4-3] [v5 MQTT-3.8.4-3] [v5 MQTT-3.8.4-4]

    Subscribing again to the same filter replaces the subscription (new QoS, one
    copy per message) and re-sends the retained message.
    """
    topic = f"{ns}/replace"
    pub = peer(hub, "pub", version=version)
    pub.publish(topic, b"retained", qos=2, retain=True)
    sub = peer(hub, "sub", version=version)
    assert sub.subscribe(topic, qos=0) == [0]
    assert sub.expect(topic=topic).qos == 0
    assert sub.subscribe(topic, qos=2) == [2]
    resent = sub.expect(topic=topic)
    assert (resent.payload, resent.qos, resent.retain) == (b"retained", 2, True)
    pub.publish(topic, b"live", qos=2)
    msg = sub.expect(topic=topic)
    assert (msg.payload, msg.qos) == (b"live", 2)
    sub.expect_none(topic=topic)
