"""Hub events and ``$SYS`` through paho (issue 5): the events a hub publishes on its own
topics reach paho subscribers of either protocol version, as JSON with the reference's
keys; ``disable_events`` and ``events_topic_prefix`` of a hub declared in the
configuration; the ``$SYS/broker`` figures of a dedicated hub, retained.

The events here are about the development hub's anonymous clients, so their object is the
hub. Every test needs iothub itself (events and ``$SYS`` values are iothub's own).
"""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest

import raw
from clients import V5, V311, ProtocolExpectation

BOTH = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def misbehave(hub, cid) -> None:
    """An anonymous client connects, then sends a PINGREQ with reserved flags set (0xC1)."""
    client, ack = raw.open_session(hub.mqtt_addr, cid("bad"))
    assert ack["code"] == 0
    client.send(bytes([0xC1, 0x00]))
    assert client.closed_within(5.0)
    client.close()


def check_event(msg, prefix: str) -> dict:
    """The event's JSON, after checking its topic and the keys every event has."""
    event = json.loads(msg.payload)
    levels = msg.topic.split("/")
    assert msg.topic.startswith(prefix + "/"), msg.topic
    assert levels[-3:] == [event["severity"], event["object-type"], event["object-id"]], (msg.topic, event)
    assert set(event) >= {"time", "severity", "object-type", "object-id", "msg", "packet"}, event
    assert event["time"].endswith("Z"), event
    datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
    return event


@BOTH
def test_events_reach_paho_subscribers(hub_with, peer, cid, version):
    hub = hub_with(hub={"plan": "plan_dedicated"})
    watcher = peer(hub, "watcher", version=version)
    watcher.subscribe("$SCW/events/#", qos=1)
    misbehave(hub, cid)
    msg = watcher.expect()
    assert msg.qos == 1 and not msg.retain
    event = check_event(msg, "$SCW/events")
    assert (event["severity"], event["object-type"]) == ("error", "hub"), event
    assert UUID.match(event["object-id"]), event
    assert event["msg"].startswith("cannot decode MQTT header"), event
    assert event["packet"] == "c1 00", event
    if version == V5:
        assert msg.content_type == "application/json"
        assert msg.payload_format_indicator == 1


def test_disable_events_silences_a_configured_hub(hub_with, peer, cid):
    hub = hub_with(hub={"disable_events": True})
    watcher = peer(hub, "watcher")
    watcher.subscribe("$SCW/events/#", qos=1)
    misbehave(hub, cid)
    watcher.expect_none(timeout=1.0)


def test_a_custom_prefix_moves_events_and_is_closed_to_clients(hub_with, peer, cid):
    hub = hub_with(hub={"events_topic_prefix": "ops/events"})
    watcher = peer(hub, "watcher")
    watcher.subscribe("ops/events/#", qos=1)
    watcher.subscribe("$SCW/events/#", qos=1)
    misbehave(hub, cid)
    event = check_event(watcher.expect(), "ops/events")
    assert event["msg"].startswith("cannot decode MQTT header"), event
    watcher.expect_none(timeout=0.5)
    # Under the prefix a client's PUBLISH is refused (0x87), and raises an event itself.
    publisher = peer(hub, "publisher")
    assert publisher.publish("ops/events/error/hub/fake", b"{}", qos=1) == 0x87
    event = check_event(watcher.expect(), "ops/events")
    assert event["msg"] == "unauthorized topic ops/events/error/hub/fake", event


@BOTH
def test_sys_figures_are_retained_on_a_dedicated_hub(hub_with, peer, version):
    hub = hub_with(hub={"plan": "plan_dedicated"})
    first = peer(hub, "first", version=version)
    first.subscribe("$SYS/broker/version", qos=0)
    first.expect(topic="$SYS/broker/version")
    sub = peer(hub, "sub", version=version)
    sub.subscribe("$SYS/broker/#", qos=0)
    got = {}
    while True:
        try:
            msg = sub.expect(timeout=1.0)
        except ProtocolExpectation:  # quiet: every retained figure has arrived
            break
        got[msg.topic] = msg
    assert got["$SYS/broker/version"].payload.decode().startswith("iothub ")
    assert got["$SYS/broker/version"].retain
    assert got["$SYS/broker/uptime"].payload.decode().endswith(" seconds")
    for name in ("clients/connected", "subscriptions/count", "retained messages/count"):
        assert got[f"$SYS/broker/{name}"].payload.decode().isdigit(), name
