"""The CDR service tests' shared stack: Redis, PostgreSQL with our schema and the receiver on
loopback (bench/devstack.py), and a clean slate for each test."""
from __future__ import annotations

import signal
from typing import Iterator

import pytest

from bench import devstack
from bench.devstack import Stack


def started(service: str = "receiver", **stack_args) -> Iterator[Stack]:
    """A module's stack (for a module-scoped fixture): data services and ``service`` (the receiver,
    or the admin API) running."""
    need = devstack.missing_packages()
    if need:
        from lab import hostdeps
        hostdeps.ensure(need, "the CDR service tests")
    st = Stack(**stack_args)
    try:
        st.start_data()
        st.start_receiver() if service == "receiver" else st.start_admin()
        yield st
    finally:
        st.close()


def cleaned(stack: Stack) -> Iterator[Stack]:
    """Empty table and queues, no worker running, the receiver running; the worker killed after."""
    if stack.worker is not None:
        stack.worker.stop()
        stack.worker = None
    stack.pg.psql("TRUNCATE cdr.calls, cdr.call_uuids, cdr.conflicts")
    stack.redis.cli("DEL", "cdr:queue", "cdr:processing:pbx1", "cdr:processing:pbx2", "cdr:dead")
    if stack.receiver is None or not stack.receiver.running:
        stack.start_receiver()
    yield stack
    if stack.worker is not None:
        stack.worker.stop(signal.SIGKILL)
        stack.worker = None


@pytest.fixture(scope="module")
def stack():
    """The module's stack with the services' default settings (import it, or define your own)."""
    yield from started()


@pytest.fixture
def clean(stack):
    """Empty table and queues; no worker running; the receiver running."""
    yield from cleaned(stack)
