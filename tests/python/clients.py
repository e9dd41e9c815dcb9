"""A small blocking wrapper around paho-mqtt 2.x for the end-to-end tests.

paho runs its network loop in a thread; this wrapper turns its callbacks into
blocking calls with timeouts (connect, subscribe, publish, expect a message),
so each test reads as the protocol exchange it checks. Waits for something
that must happen use generous timeouts (EXPECT_S); checks that something must
NOT happen wait a short, fixed QUIET_S.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

EXPECT_S = 5.0
QUIET_S = 0.5

V311 = 4
V5 = 5
VERSIONS = {V311: mqtt.MQTTv311, V5: mqtt.MQTTv5}


class ProtocolExpectation(AssertionError):
    """The broker did not do what the test expected (reported as a test failure)."""


@dataclass
class Received:
    """One PUBLISH delivered to the client, with the v5 properties we care about decoded."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    mid: int
    user_properties: list[tuple[str, str]] = field(default_factory=list)
    response_topic: str | None = None
    correlation_data: bytes | None = None
    content_type: str | None = None
    payload_format_indicator: int | None = None
    message_expiry_interval: int | None = None
    subscription_identifiers: list[int] = field(default_factory=list)
    topic_alias: int | None = None


@dataclass
class Connack:
    reason_code: int
    session_present: bool
    properties: dict


@dataclass
class Disconnected:
    """How the connection ended: a DISCONNECT from the server (with its reason code) or a close."""

    from_server_packet: bool
    reason_code: int


def props_to_dict(props: Properties | None) -> dict:
    if props is None:
        return {}
    out = {}
    for name in props.names:
        attr = name.replace(" ", "")
        if hasattr(props, attr):
            out[attr] = getattr(props, attr)
    return out


def make_props(packet_type: int, **values) -> Properties:
    """Properties for a packet, e.g. make_props(PacketTypes.PUBLISH, ContentType="text/plain")."""
    props = Properties(packet_type)
    for name, value in values.items():
        setattr(props, name, value)
    return props


def _received(msg: mqtt.MQTTMessage) -> Received:
    rec = Received(
        topic=msg.topic,
        payload=bytes(msg.payload),
        qos=msg.qos,
        retain=bool(msg.retain),
        dup=bool(msg.dup),
        mid=msg.mid,
    )
    props = getattr(msg, "properties", None)
    if props is not None:
        rec.user_properties = list(getattr(props, "UserProperty", []) or [])
        rec.response_topic = getattr(props, "ResponseTopic", None)
        rec.correlation_data = getattr(props, "CorrelationData", None)
        rec.content_type = getattr(props, "ContentType", None)
        rec.payload_format_indicator = getattr(props, "PayloadFormatIndicator", None)
        rec.message_expiry_interval = getattr(props, "MessageExpiryInterval", None)
        sub_ids = getattr(props, "SubscriptionIdentifier", [])
        rec.subscription_identifiers = list(sub_ids) if isinstance(sub_ids, list) else [sub_ids]
        rec.topic_alias = getattr(props, "TopicAlias", None)
    return rec


class Peer:
    """One MQTT client connection driven by paho (v3.1.1 or v5)."""

    def __init__(
        self,
        hub,
        client_id: str,
        version: int = V5,
        clean: bool = True,
        keepalive: int = 60,
        session_expiry: int | None = None,
        connect_props: dict | None = None,
        will: dict | None = None,
        manual_ack: bool = False,
        username: str | None = None,
    ) -> None:
        self.hub = hub
        self.version = version
        self.client_id = client_id
        self.clean = clean
        self.keepalive = keepalive
        self.messages: queue.Queue[Received] = queue.Queue()
        self._cond = threading.Condition()
        self._acks: dict[int, object] = {}
        self.connack: Connack | None = None
        self.disconnected: Disconnected | None = None
        kwargs = {}
        if version == V311:
            kwargs["clean_session"] = clean
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=VERSIONS[version],
            reconnect_on_failure=False,
            manual_ack=manual_ack,
            **kwargs,
        )
        if username is not None:
            self.client.username_pw_set(username)
        self._connect_props = None
        if version == V5:
            values = dict(connect_props or {})
            if session_expiry is not None:
                values["SessionExpiryInterval"] = session_expiry
            if values:
                self._connect_props = make_props(PacketTypes.CONNECT, **values)
        if will is not None:
            will_props = None
            if will.get("props"):
                will_props = make_props(PacketTypes.WILLMESSAGE, **will["props"])
            self.client.will_set(
                will["topic"],
                will.get("payload", b""),
                qos=will.get("qos", 0),
                retain=will.get("retain", False),
                properties=will_props,
            )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        self.client.on_publish = self._on_publish

    # -- callbacks (paho's network thread) ---------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            self.connack = Connack(
                reason_code=reason_code.value,
                session_present=bool(flags.session_present),
                properties=props_to_dict(properties),
            )
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            self.disconnected = Disconnected(
                from_server_packet=bool(flags.is_disconnect_packet_from_server),
                reason_code=reason_code.value if isinstance(reason_code, ReasonCode) else int(reason_code),
            )
            self._cond.notify_all()

    def _on_message(self, client, userdata, msg) -> None:
        self.messages.put(_received(msg))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._cond:
            self._acks[mid] = [rc.value for rc in reason_codes]
            self._cond.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._cond:
            self._acks[mid] = [rc.value for rc in reason_codes]
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            self._acks[mid] = reason_code.value
            self._cond.notify_all()

    # -- blocking API --------------------------------------------------------

    def _wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value is not None:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ProtocolExpectation(f"{self.client_id}: timed out after {timeout}s waiting for {what}")
                self._cond.wait(left)

    def connect(self, expect_success: bool = True, timeout: float = EXPECT_S) -> Connack:
        host, port = self.hub.mqtt_addr
        if self.version == V5:
            self.client.connect(
                host, port, keepalive=self.keepalive, clean_start=self.clean, properties=self._connect_props
            )
        else:
            self.client.connect(host, port, keepalive=self.keepalive)
        self.client.loop_start()
        result = self._wait(
            lambda: self.connack or (Connack(-1, False, {}) if self.disconnected else None),
            timeout,
            "CONNACK",
        )
        if expect_success and result.reason_code != 0:
            raise ProtocolExpectation(f"{self.client_id}: connection refused: {result}")
        return result

    def subscribe(
        self,
        topic: str,
        qos: int = 0,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
        sub_id: int | None = None,
    ) -> list[int]:
        """SUBSCRIBE one filter and wait for the SUBACK; returns its reason codes."""
        if self.version == V5:
            options = SubscribeOptions(
                qos=qos,
                noLocal=no_local,
                retainAsPublished=retain_as_published,
                retainHandling=retain_handling,
            )
            props = make_props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=sub_id) if sub_id else None
            rc, mid = self.client.subscribe(topic, options=options, properties=props)
        else:
            rc, mid = self.client.subscribe(topic, qos)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise ProtocolExpectation(f"subscribe({topic}) not sent: {rc}")
        return self._wait(lambda: self._acks.pop(mid, None), EXPECT_S, f"SUBACK for {topic}")

    def subscribe_many(self, filters: list[tuple[str, int]]) -> list[int]:
        """One SUBSCRIBE with several filters; returns the SUBACK reason codes in order."""
        if self.version == V5:
            rc, mid = self.client.subscribe([(f, SubscribeOptions(qos=q)) for f, q in filters])
        else:
            rc, mid = self.client.subscribe(filters)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise ProtocolExpectation(f"subscribe({filters}) not sent: {rc}")
        return self._wait(lambda: self._acks.pop(mid, None), EXPECT_S, "SUBACK")

    def unsubscribe(self, *topics: str) -> list[int]:
        """UNSUBSCRIBE and wait for the UNSUBACK; returns its v5 reason codes ([] for v3.1.1)."""
        rc, mid = self.client.unsubscribe(list(topics))
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise ProtocolExpectation(f"unsubscribe({topics}) not sent: {rc}")
        return self._wait(lambda: self._acks.pop(mid, None), EXPECT_S, "UNSUBACK")

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 0,
        retain: bool = False,
        props: dict | None = None,
        wait: bool = True,
    ) -> int | None:
        """PUBLISH; for QoS > 0 waits for PUBACK/PUBCOMP and returns its reason code."""
        properties = make_props(PacketTypes.PUBLISH, **props) if props else None
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ProtocolExpectation(f"publish({topic}) not sent: {info.rc}")
        if not wait:
            return None
        return self._wait(lambda: self._acks.pop(info.mid, None), EXPECT_S, f"publish completion for {topic}")

    def expect(self, timeout: float = EXPECT_S, topic: str | None = None) -> Received:
        """The next delivered message (optionally: the next one on ``topic``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProtocolExpectation(
                    f"{self.client_id}: no message{' on ' + topic if topic else ''} within {timeout}s"
                )
            try:
                msg = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if topic is None or msg.topic == topic:
                return msg

    def expect_n(self, count: int, timeout: float = EXPECT_S) -> list[Received]:
        return [self.expect(timeout=timeout) for _ in range(count)]

    def expect_none(self, timeout: float = QUIET_S, topic: str | None = None) -> None:
        """Asserts that no message (on ``topic``, if given) arrives within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                msg = self.messages.get(timeout=left)
            except queue.Empty:
                return
            if topic is None or msg.topic == topic:
                raise ProtocolExpectation(f"{self.client_id}: unexpected message {msg}")

    def ack(self, msg: Received) -> None:
        """Acknowledges a message by hand (clients created with manual_ack=True)."""
        self.client.ack(msg.mid, msg.qos)

    def wait_disconnected(self, timeout: float = EXPECT_S) -> Disconnected:
        return self._wait(lambda: self.disconnected, timeout, "the connection to end")

    def is_connected(self) -> bool:
        return self.client.is_connected()

    def disconnect(self, reason_code: int = 0, props: dict | None = None) -> None:
        """A normal DISCONNECT (v5: with ``reason_code`` and properties), then stop the loop."""
        if self.version == V5:
            rc = ReasonCode(PacketTypes.DISCONNECT, identifier=reason_code)
            properties = make_props(PacketTypes.DISCONNECT, **props) if props else None
            self.client.disconnect(reasoncode=rc, properties=properties)
        else:
            self.client.disconnect()
        self._wait(lambda: self.disconnected, EXPECT_S, "DISCONNECT to be sent")
        self.client.loop_stop()

    def drop(self) -> None:
        """Closes the TCP connection without DISCONNECT (as a crashed device would)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        """Best-effort cleanup at the end of a test."""
        try:
            if self.client.is_connected():
                self.client.disconnect()
        finally:
            self.client.loop_stop()


def connected(hub, client_id: str, **kwargs) -> Peer:
    """A connected Peer (success asserted)."""
    peer = Peer(hub, client_id, **kwargs)
    peer.connect()
    return peer
