"""MQTT over TLS with paho-mqtt (issue 4): devices identified by their client certificate on
the ``tls`` listener, the server verified against the CA that ``GET .../server-ca`` serves.

Certificates come from the management API (the hub's managed CA) and from the ``openssl``
command-line tool (a custom hub CA, an expired certificate), never from iothub's code. These
need iothub's own listeners and API, so they are skipped against an external broker.
"""

from __future__ import annotations

import json
import queue
import socket
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

import harness

pytestmark = pytest.mark.usefixtures("iothub_only")

WAIT_S = 5.0
REGION_PATH = "/iot/v1/regions/fr-par"


class TlsHub:
    """A hub with an MQTT and a TLS listener (only registered devices), its API as admin."""

    def __init__(self, hub: harness.Hub, workdir: Path):
        self.hub = hub
        self.workdir = workdir
        listeners = {m.group(1): m.group(2) for m in harness.LISTENING.finditer(hub.logs())}
        assert "tls" in listeners, hub.logs()
        host, _, port = listeners["tls"].rpartition(":")
        self.tls = (host, int(port))
        self.key = (workdir / "iothub-data" / "admin-api-key").read_text().strip()
        self.server_ca = workdir / "server-ca.pem"
        status, body = self.call("GET", "server-ca", raw=True)
        assert status == 200, body
        self.server_ca.write_text(body)

    def call(self, method: str, path: str, body: dict | None = None, raw: bool = False):
        host, port = self.hub.api_addr
        request = urllib.request.Request(
            f"http://{host}:{port}{REGION_PATH}/{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"X-Auth-Token": self.key, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=WAIT_S) as response:
                text = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as err:
            text, status = err.read().decode(), err.code
        if raw:
            return status, text
        assert 200 <= status < 300, f"{method} {path}: {status} {text}"
        return json.loads(text) if text else None

    def device(self, hub_id: str, name: str, **fields) -> tuple[str, Path | None, Path | None]:
        """Creates a device; returns its id and its certificate and key files (if issued)."""
        created = self.call("POST", "devices", {"hub_id": hub_id, "name": name, **fields})
        device_id = created["device"]["id"]
        certificate = created.get("certificate")
        if certificate is None:
            return device_id, None, None
        crt, key = self.workdir / f"{name}.crt", self.workdir / f"{name}.key"
        crt.write_text(certificate["crt"])
        key.write_text(certificate["key"])
        return device_id, crt, key


@pytest.fixture
def tls_hub(request: pytest.FixtureRequest, iothub_binary, tmp_path_factory) -> TlsHub:
    config = harness.default_config()
    config["listeners"] = {
        "mqtt": [{"name": "mqtt", "bind": "127.0.0.1:0"}],
        "tls": [{"name": "tls", "bind": "127.0.0.1:0"}],
    }
    workdir = tmp_path_factory.mktemp("iothub")
    hub = harness.start_hub(iothub_binary, config, workdir)
    request.node._iothub_hubs = [hub]
    yield TlsHub(hub, workdir)
    hub.stop()


class Client:
    """A paho client over TLS on its own network thread; messages land in a queue."""

    def __init__(self, tls: TlsHub, client_id: str, version: int, cert: Path | None, key: Path | None):
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.reason = None
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=version,
            reconnect_on_failure=False,
        )
        # Verifies the chain and the host name (localhost is in the certificate's SANs).
        self.client.tls_set(
            ca_certs=str(tls.server_ca),
            certfile=None if cert is None else str(cert),
            keyfile=None if key is None else str(key),
            cert_reqs=ssl.CERT_REQUIRED,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda *_args: self.subscribed.set()
        self.client.connect("localhost", tls.tls[1], keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(WAIT_S), "no CONNACK"

    def _on_connect(self, _client, _userdata, _flags, reason, _props):
        self.reason = reason
        self.connected.set()

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(WAIT_S), "no SUBACK"

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(WAIT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect(tls: TlsHub, client_id: str, version: int, cert=None, key=None) -> Client:
    client = Client(tls, client_id, version, cert, key)
    assert not client.reason.is_failure, f"refused: {client.reason}"
    return client


@pytest.mark.parametrize("version", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def test_devices_exchange_messages_over_mutual_tls(tls_hub, version):
    """Two devices connect with the certificates the API issued them (one with its device id
    as client id, one with an empty client id, which becomes the device id) and exchange a
    QoS 1 message."""
    hub_id = tls_hub.call("POST", "hubs", {"name": "paho"})["id"]
    sensor, sensor_crt, sensor_key = tls_hub.device(hub_id, "sensor")
    app, app_crt, app_key = tls_hub.device(hub_id, "app")
    subscriber = connect(tls_hub, app, version, app_crt, app_key)
    subscriber.subscribe("paho/#")
    publisher = connect(tls_hub, "", version, sensor_crt, sensor_key)
    publisher.publish("paho/temperature", b"21.5")
    message = subscriber.messages.get(timeout=WAIT_S)
    assert (message.topic, message.payload) == ("paho/temperature", b"21.5")
    assert tls_hub.call("GET", f"devices/{sensor}")["is_connected"] is True
    publisher.close()
    subscriber.close()


@pytest.mark.parametrize("version", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def test_server_only_tls_admits_only_insecure_devices(tls_hub, version):
    """Without a client certificate, an ``allow_insecure`` device connects over TLS; a device
    that requires mutual TLS is refused (not authorized) and no session is made."""
    hub_id = tls_hub.call("POST", "hubs", {"name": "server-only"})["id"]
    loose, _, _ = tls_hub.device(hub_id, "loose", allow_insecure=True)
    strict, _, _ = tls_hub.device(hub_id, "strict")
    connect(tls_hub, loose, version).close()
    refused = Client(tls_hub, strict, version, None, None)
    assert refused.reason.is_failure
    assert refused.reason.value in (5, 0x87), refused.reason
    refused.close()
    assert tls_hub.call("GET", f"devices/{strict}")["is_connected"] is False


def openssl(workdir: Path, *args: str) -> None:
    out = subprocess.run(["openssl", *args], cwd=workdir, capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"openssl {args}: {out.stderr}"


def openssl_cert(workdir: Path, name: str, cn: str, ca: str | None, extensions: str, start: str, end: str) -> None:
    """``name``.crt/.key: an EC P-256 certificate for ``cn``, signed by ``ca`` (a name made
    before) or self-signed, with these extensions and dates (``openssl ca`` takes any)."""
    (workdir / "index.txt").touch()
    (workdir / "issued").mkdir(exist_ok=True)
    # openssl reads the serial as hex digit pairs: always an even number of digits.
    (workdir / "serial").write_text(f"{zlib.crc32(name.encode()) | 0x1000_0000:08X}\n")
    (workdir / "ca.cnf").write_text(
        "[ca]\ndefault_ca = any\n[any]\ndatabase = index.txt\nnew_certs_dir = issued\nserial = serial\n"
        "default_md = sha256\npolicy = policy\nunique_subject = no\n[policy]\ncommonName = supplied\n"
    )
    (workdir / f"{name}.ext").write_text(f"[ext]\n{extensions}\n")
    openssl(workdir, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key")
    openssl(workdir, "req", "-new", "-key", f"{name}.key", "-subj", f"/CN={cn}", "-out", f"{name}.csr")
    signer = ["-selfsign", "-keyfile", f"{name}.key"] if ca is None else ["-cert", f"{ca}.crt", "-keyfile", f"{ca}.key"]
    openssl(
        workdir, "ca", "-batch", "-notext", "-config", "ca.cnf", "-in", f"{name}.csr", "-out", f"{name}.crt",
        "-extfile", f"{name}.ext", "-extensions", "ext", "-startdate", start, "-enddate", end, *signer,
    )


CA_EXT = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash"
CLIENT_EXT = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth"


def test_custom_ca_devices_and_an_expired_certificate(tls_hub, tmp_path):
    """A hub given its own CA (openssl-made, with proof of possession): a device certificate
    it issued connects as the device named by its CN (client id = the name); an expired one
    from the same CA fails the TLS handshake, and the listener keeps serving."""
    hub_id = tls_hub.call("POST", "hubs", {"name": "custom"})["id"]
    device, _, _ = tls_hub.device(hub_id, "meter")
    forever = ("20200101000000Z", "20800101000000Z")
    openssl_cert(tmp_path, "root", "customer root", None, CA_EXT, *forever)
    openssl_cert(tmp_path, "proof", hub_id, "root", CLIENT_EXT, *forever)
    openssl_cert(tmp_path, "meter", "meter", "root", CLIENT_EXT, *forever)
    openssl_cert(tmp_path, "old", "meter", "root", CLIENT_EXT, "20200101000000Z", "20210101000000Z")
    tls_hub.call("POST", f"hubs/{hub_id}/disable", {})
    tls_hub.call(
        "POST",
        f"hubs/{hub_id}/ca",
        {
            "ca_cert_pem": (tmp_path / "root.crt").read_text(),
            "challenge_cert_pem": (tmp_path / "proof.crt").read_text(),
        },
    )
    tls_hub.call("POST", f"hubs/{hub_id}/enable", {})

    watcher = connect(tls_hub, "meter", mqtt.MQTTv5, tmp_path / "meter.crt", tmp_path / "meter.key")
    assert tls_hub.call("GET", f"devices/{device}")["is_connected"] is True
    watcher.close()
    refusal = tls_refusal(tls_hub, tmp_path / "old.crt", tmp_path / "old.key")
    assert "CERTIFICATE_EXPIRED" in refusal, refusal
    again = connect(tls_hub, device, mqtt.MQTTv311, tmp_path / "meter.crt", tmp_path / "meter.key")
    again.close()


def tls_refusal(tls_hub: TlsHub, cert: Path, key: Path) -> str:
    """Connects with this certificate and sends an MQTT 5 CONNECT; returns the TLS alert that
    ended the connection (OpenSSL's name for it), or what the hub answered instead."""
    context = ssl.create_default_context(cafile=str(tls_hub.server_ca))
    context.load_cert_chain(str(cert), str(key))
    connect_packet = bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([5, 0x02, 0, 60, 0, 0, 0])
    with socket.create_connection(("127.0.0.1", tls_hub.tls[1]), timeout=WAIT_S) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as stream:
                # TLS 1.3: the hub checks the client's certificate after the client's side
                # of the handshake; its alert arrives on the first read.
                stream.sendall(connect_packet)
                return f"answered {stream.recv(64)!r}"
        except ssl.SSLError as err:
            return str(err.reason)
