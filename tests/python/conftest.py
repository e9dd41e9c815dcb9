"""Fixtures for the Python end-to-end tests: a fresh iothub per test.

``hub`` starts iothub with the default test config; ``hub_with(...)`` starts it
with overridden ``mqtt:`` settings or hub ``limits:``. In external mode
(IOTHUB_TEST_EXTERNAL_BROKER) ``hub`` returns that broker and ``hub_with``
skips, because an external broker cannot take our config. When a test fails,
the hub's stderr is attached to the report.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

import harness
from clients import Peer


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.failed:
        for index, hub in enumerate(getattr(item, "_iothub_hubs", [])):
            report.sections.append((f"iothub #{index} stderr", hub.logs() or "(empty)"))
    return report


@pytest.fixture(scope="session")
def iothub_binary():
    """The iothub executable, or None in external mode; a clear error if it is missing."""
    if harness.external_broker() is not None:
        return None
    try:
        return harness.find_binary()
    except harness.HarnessError as err:
        pytest.fail(str(err), pytrace=False)


HubFactory = Callable[..., harness.Hub]


@pytest.fixture
def hub_with(request: pytest.FixtureRequest, iothub_binary, tmp_path_factory) -> Iterator[HubFactory]:
    """Starts a hub with ``mqtt=``, ``limits=`` and ``hub=`` overrides (skips in external mode)."""
    started: list[harness.Hub] = []
    request.node._iothub_hubs = started

    def start(mqtt: dict | None = None, limits: dict | None = None, hub: dict | None = None) -> harness.Hub:
        external = harness.external_broker()
        if external is not None:
            if mqtt or limits or hub:
                pytest.skip("needs iothub-specific config; not available against an external broker")
            return harness.Hub(mqtt_host=external[0], mqtt_port=external[1], external=True)
        config = harness.build_config(mqtt=mqtt, limits=limits, hub=hub)
        workdir = tmp_path_factory.mktemp("iothub")
        try:
            running = harness.start_hub(iothub_binary, config, workdir)
        except harness.HarnessError as err:
            pytest.fail(str(err), pytrace=False)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def hub(hub_with: HubFactory) -> harness.Hub:
    """A hub with the default test config (or the external broker)."""
    return hub_with()


@pytest.fixture
def iothub_only() -> None:
    """Skips the test in external mode: it checks iothub's own API or config behaviour."""
    if harness.external_broker() is not None:
        pytest.skip("checks iothub-specific behaviour; not available against an external broker")


@pytest.fixture
def ns() -> str:
    """A unique topic prefix, so tests never see each other's (retained) messages on a shared broker."""
    return f"e2e/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def cid() -> Callable[[str], str]:
    """Makes unique client ids (at most 23 characters, [0-9a-zA-Z], as every server must accept)."""
    run = uuid.uuid4().hex[:8]

    def make(name: str) -> str:
        return (name.replace("-", "").replace("_", "")[:14] + run)[:23]

    return make


@pytest.fixture
def peer(cid) -> Iterator[Callable[..., Peer]]:
    """Makes paho clients: ``peer(hub, "name", version=5, connect=True, **Peer kwargs)``.

    The same name within one test gives the same client id, so a test can
    reconnect "the same device". Every client is closed at teardown.
    """
    made: list[Peer] = []

    def make(hub: harness.Hub, name: str, connect: bool = True, **kwargs) -> Peer:
        client_id = kwargs.pop("client_id", None)
        client = Peer(hub, cid(name) if client_id is None else client_id, **kwargs)
        made.append(client)
        if connect:
            client.connect()
        return client

    yield make
    for client in made:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - teardown must close every client whatever one of them does
            pass
