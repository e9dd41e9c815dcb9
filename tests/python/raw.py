"""Hand-written MQTT bytes for the checks paho cannot express.

paho (rightly) refuses to send malformed or unusual packets, and hides some
fields (CONNACK flag bits, packet identifiers of QoS 2 flows). These helpers
build frames by hand from the specs' tables, independently of the project's
codec, so a codec bug cannot hide behind a shared implementation.
"""

from __future__ import annotations

import socket
import struct
import time

# Control packet types (upper nibble of the first byte).
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15

# MQTT 5 property identifiers -> value type (Table 2-4 of MQTT 5.0).
PROPERTY_TYPES = {
    0x01: "byte", 0x02: "u32", 0x03: "utf8", 0x08: "utf8", 0x09: "bin", 0x0B: "varint",
    0x11: "u32", 0x12: "utf8", 0x13: "u16", 0x15: "utf8", 0x16: "bin", 0x17: "byte",
    0x18: "u32", 0x19: "byte", 0x1A: "utf8", 0x1C: "utf8", 0x1F: "utf8", 0x21: "u16",
    0x22: "u16", 0x23: "u16", 0x24: "byte", 0x25: "byte", 0x26: "pair", 0x27: "u32",
    0x28: "byte", 0x29: "byte", 0x2A: "byte",
}
SESSION_EXPIRY, ASSIGNED_CLIENT_ID, SERVER_KEEP_ALIVE = 0x11, 0x12, 0x13
RECEIVE_MAXIMUM, TOPIC_ALIAS_MAXIMUM, TOPIC_ALIAS = 0x21, 0x22, 0x23
MAXIMUM_PACKET_SIZE, REASON_STRING, USER_PROPERTY, SUBSCRIPTION_ID = 0x27, 0x1F, 0x26, 0x0B


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value % 128
        value //= 128
        if value:
            byte |= 0x80
        out.append(byte)
        if not value:
            return bytes(out)


def utf8(text: str | bytes) -> bytes:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return struct.pack("!H", len(data)) + data


def frame(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + varint(len(body)) + body


def encode_props(props: list[tuple[int, object]] | None) -> bytes:
    """A v5 property block (length prefix included) from (identifier, value) pairs."""
    out = bytearray()
    for ident, value in props or []:
        kind = PROPERTY_TYPES[ident]
        out += varint(ident)
        if kind == "byte":
            out.append(int(value))
        elif kind == "u16":
            out += struct.pack("!H", int(value))
        elif kind == "u32":
            out += struct.pack("!I", int(value))
        elif kind == "varint":
            out += varint(int(value))
        elif kind in ("utf8", "bin"):
            out += utf8(value)
        elif kind == "pair":
            key, val = value
            out += utf8(key) + utf8(val)
    return varint(len(out)) + bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def decode_props(data: bytes, pos: int) -> tuple[dict[int, list], int]:
    """Decodes a v5 property block at ``pos``; every identifier maps to a list of its values."""
    length, pos = read_varint(data, pos)
    end = pos + length
    props: dict[int, list] = {}
    while pos < end:
        ident, pos = read_varint(data, pos)
        kind = PROPERTY_TYPES[ident]
        if kind == "byte":
            value, pos = data[pos], pos + 1
        elif kind == "u16":
            value, pos = struct.unpack_from("!H", data, pos)[0], pos + 2
        elif kind == "u32":
            value, pos = struct.unpack_from("!I", data, pos)[0], pos + 4
        elif kind == "varint":
            value, pos = read_varint(data, pos)
        elif kind in ("utf8", "bin"):
            size = struct.unpack_from("!H", data, pos)[0]
            raw = data[pos + 2 : pos + 2 + size]
            value, pos = (raw.decode("utf-8") if kind == "utf8" else raw), pos + 2 + size
        else:
            ksize = struct.unpack_from("!H", data, pos)[0]
            key = data[pos + 2 : pos + 2 + ksize].decode("utf-8")
            pos += 2 + ksize
            vsize = struct.unpack_from("!H", data, pos)[0]
            val = data[pos + 2 : pos + 2 + vsize].decode("utf-8")
            pos += 2 + vsize
            value = (key, val)
        props.setdefault(ident, []).append(value)
    return props, end


# -- packet builders -----------------------------------------------------------


def connect(
    client_id: str | bytes,
    version: int = 4,
    clean: bool = True,
    keepalive: int = 60,
    props: list[tuple[int, object]] | None = None,
    will: dict | None = None,
    protocol_name: bytes = b"MQTT",
    extra_flags: int = 0,
) -> bytes:
    flags = (0x02 if clean else 0) | extra_flags
    payload = utf8(client_id)
    if will is not None:
        flags |= 0x04 | (will.get("qos", 0) << 3) | (0x20 if will.get("retain") else 0)
        if version == 5:
            payload += encode_props(will.get("props"))
        payload += utf8(will["topic"]) + utf8(will.get("payload", b""))
    body = utf8(protocol_name) + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == 5:
        body += encode_props(props)
    return frame(CONNECT << 4, body + payload)


def subscribe(packet_id: int, filters: list[tuple[str, int]], version: int = 4, props=None) -> bytes:
    body = struct.pack("!H", packet_id)
    if version == 5:
        body += encode_props(props)
    for topic, options in filters:
        body += utf8(topic) + bytes([options])
    return frame((SUBSCRIBE << 4) | 0x02, body)


def publish(
    topic: str | bytes,
    payload: bytes = b"",
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    packet_id: int = 1,
    version: int = 4,
    props=None,
) -> bytes:
    first = (PUBLISH << 4) | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = utf8(topic)
    if qos:
        body += struct.pack("!H", packet_id)
    if version == 5:
        body += encode_props(props)
    return frame(first, body + payload)


def ack(packet_type: int, packet_id: int) -> bytes:
    """PUBACK / PUBREC / PUBREL / PUBCOMP with only a packet identifier."""
    first = (packet_type << 4) | (0x02 if packet_type == PUBREL else 0)
    return frame(first, struct.pack("!H", packet_id))


def disconnect(version: int = 4, reason: int = 0) -> bytes:
    if version == 5 and reason:
        return frame(DISCONNECT << 4, bytes([reason]))
    return frame(DISCONNECT << 4, b"")


# -- parsed packets ------------------------------------------------------------


class Packet:
    """A received control packet: first byte and body (fields parsed on demand)."""

    def __init__(self, first: int, body: bytes) -> None:
        self.first = first
        self.body = body

    @property
    def type(self) -> int:
        return self.first >> 4

    @property
    def flags(self) -> int:
        return self.first & 0x0F

    def __repr__(self) -> str:
        return f"Packet(type={self.type}, flags={self.flags:#x}, body={self.body.hex()})"

    def packet_id(self) -> int:
        return struct.unpack_from("!H", self.body, 0)[0]

    def publish_fields(self, version: int) -> dict:
        """topic, packet_id, qos, dup, retain, props, payload of a PUBLISH."""
        size = struct.unpack_from("!H", self.body, 0)[0]
        topic = self.body[2 : 2 + size].decode("utf-8")
        pos = 2 + size
        qos = (self.flags >> 1) & 0x03
        packet_id = None
        if qos:
            packet_id = struct.unpack_from("!H", self.body, pos)[0]
            pos += 2
        props: dict[int, list] = {}
        if version == 5:
            props, pos = decode_props(self.body, pos)
        return {
            "topic": topic,
            "packet_id": packet_id,
            "qos": qos,
            "dup": bool(self.flags & 0x08),
            "retain": bool(self.flags & 0x01),
            "props": props,
            "payload": self.body[pos:],
        }


class RawClient:
    """A TCP connection on which the test writes bytes and reads whole packets."""

    def __init__(self, addr: tuple[str, int], timeout: float = 5.0, rcvbuf: int | None = None) -> None:
        if rcvbuf is None:
            self.sock = socket.create_connection(addr, timeout=timeout)
        else:  # a small receive window, set before connecting, makes a "slow reader" deterministic
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect(addr)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete packet before the deadline")
        self.sock.settimeout(left)
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def read(self, timeout: float = 5.0) -> Packet | None:
        """The next packet, or None if the server closed the connection."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buffer) >= 2:
                try:
                    length, pos = read_varint(self.buffer, 1)
                except IndexError:
                    length, pos = -1, 0
                if length >= 0 and len(self.buffer) >= pos + length:
                    # [MQTT-1.5.5-1]: the server must encode Remaining Length minimally.
                    assert pos - 1 == len(varint(length)), f"non-minimal Remaining Length: {self.buffer[:pos].hex()}"
                    pkt = Packet(self.buffer[0], self.buffer[pos : pos + length])
                    self.buffer = self.buffer[pos + length :]
                    return pkt
            try:
                if not self._fill(deadline):
                    return None
            except ConnectionResetError:
                return None

    def expect(self, packet_type: int, timeout: float = 5.0) -> Packet:
        pkt = self.read(timeout)
        if pkt is None:
            raise AssertionError(f"connection closed while waiting for packet type {packet_type}")
        if pkt.type != packet_type:
            raise AssertionError(f"expected packet type {packet_type}, got {pkt!r}")
        return pkt

    def packet_within(self, timeout: float) -> Packet | None:
        """The next packet if one arrives within ``timeout``, else None (silence or close)."""
        try:
            return self.read(timeout)
        except (TimeoutError, socket.timeout):
            return None

    def closed_within(self, timeout: float) -> bool:
        """True if the server closes the connection within ``timeout`` (packets before that are skipped)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.read(max(deadline - time.monotonic(), 0.001)) is None:
                    return True
        except (TimeoutError, socket.timeout):
            return False
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()


def connack_fields(pkt: Packet, version: int) -> dict:
    """flags byte, reason/return code and (v5) properties of a CONNACK."""
    assert pkt.type == CONNACK, pkt
    out = {"flags": pkt.body[0], "code": pkt.body[1], "props": {}}
    if version == 5:
        out["props"], _ = decode_props(pkt.body, 2)
    return out


def open_session(
    addr, client_id: str, version: int = 4, clean: bool = True, rcvbuf: int | None = None, **kwargs
) -> tuple[RawClient, dict]:
    """Connects, reads the CONNACK, returns the client and the CONNACK fields."""
    raw = RawClient(addr, rcvbuf=rcvbuf)
    raw.send(connect(client_id, version=version, clean=clean, **kwargs))
    return raw, connack_fields(raw.expect(CONNACK), version)
