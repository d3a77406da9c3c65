"""pytest plugin (entry point ``pytest11``): a running simulated enclave per test.

``blindbox_enclave`` yields a started :class:`~blindbox.testing.EnclaveServer`
with an echo app; a client trusts it with ``roots=server.roots_pem`` and
``measurements=[server.measurement]``. Its evidence is signed with the shared
PUBLIC test keys (anyone can sign what those roots accept: loopback tests
only); pass ``platform=SoftwarePlatform.generate()`` for fresh keys. ``blindbox_enclave_factory`` starts
servers with your own WSGI app, faults and evidence options.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from blindbox.testing.server import EnclaveServer, Fault, WsgiApp


@pytest.fixture
def blindbox_enclave_factory() -> Iterator[Callable[..., EnclaveServer]]:
    """Start simulated enclaves: ``factory(app=None, faults=(), **LiveEvidence.create kwargs)``."""
    from blindbox.testing.evidence import LiveEvidence

    started: list[EnclaveServer] = []

    def factory(app: WsgiApp | None = None, faults: Iterable[Fault] = (), **evidence: Any) -> EnclaveServer:
        server = EnclaveServer(app, evidence=LiveEvidence.create(**evidence), faults=faults).start()
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def blindbox_enclave(blindbox_enclave_factory: Callable[..., EnclaveServer]) -> EnclaveServer:
    """A running simulated enclave (Milan, v5 report, echo app, honest)."""
    return blindbox_enclave_factory()
