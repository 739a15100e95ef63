"""`workbench.run.kernel_client`: a message already in the socket is read within one poll slice
even when its wake-up was lost, a timeout still ends the wait, and the runner's and the page
check's kernels are given these channels."""

import asyncio
from queue import Empty

import pytest

from workbench.run import kernel_client


class _Clock:
    def __init__(self):
        self.now = 100.0

    def monotonic(self):
        return self.now


class _Socket:
    """Polls report nothing `missed` times (a lost wake-up: the message is there, no event
    came), then the message; `None` never has one. Each poll advances the fake clock by its
    timeout, as a poll that waits it out."""

    def __init__(self, clock, missed):
        self.clock, self.missed, self.polls = clock, missed, []

    async def poll(self, timeout_ms):
        self.polls.append(timeout_ms)
        if self.missed is not None and len(self.polls) > self.missed:
            return 1
        self.clock.now += timeout_ms / 1000
        return 0


def _channel(socket):
    channel = kernel_client.SlicedPollChannel.__new__(kernel_client.SlicedPollChannel)
    channel.socket = socket

    async def recv():
        return {"msg": "reply"}

    channel._recv = recv
    return channel


@pytest.mark.parametrize("timeout", [None, 120.0])
@pytest.mark.parametrize("missed", [0, 1, 7])
def test_a_waiting_message_is_read_within_a_slice_of_a_missed_wake_up(monkeypatch, timeout, missed):
    clock = _Clock()
    monkeypatch.setattr(kernel_client.time, "monotonic", clock.monotonic)
    socket = _Socket(clock, missed)
    assert asyncio.run(_channel(socket).get_msg(timeout=timeout)) == {"msg": "reply"}
    slice_ms = int(1000 * kernel_client.POLL_SLICE_SECONDS)
    assert socket.polls == [slice_ms] * (missed + 1)  # no poll longer than a slice
    assert clock.now == pytest.approx(100.0 + missed * kernel_client.POLL_SLICE_SECONDS)


@pytest.mark.parametrize("timeout", [0.0, 0.2, 1.2, 3.0])
def test_no_message_ends_the_wait_at_the_timeout(monkeypatch, timeout):
    clock = _Clock()
    monkeypatch.setattr(kernel_client.time, "monotonic", clock.monotonic)
    socket = _Socket(clock, None)
    with pytest.raises(Empty):
        asyncio.run(_channel(socket).get_msg(timeout=timeout))
    assert clock.now == pytest.approx(100.0 + timeout, abs=1e-3)  # waited the timeout, no longer
    assert max(socket.polls) <= 1000 * kernel_client.POLL_SLICE_SECONDS


def test_the_manager_hands_out_sliced_poll_channels_and_the_runners_use_it():
    manager = kernel_client.SlicedPollKernelManager()
    client = manager.client()
    try:
        for name in ("shell", "iopub", "stdin", "control"):
            assert type(getattr(client, f"{name}_channel")) is kernel_client.SlicedPollChannel, name
    finally:
        client.stop_channels()
    import inspect

    from workbench.run import runner, workshop

    for fn in (runner.run_paper, workshop.check_pages):
        assert "kernel_manager_class=SlicedPollKernelManager" in inspect.getsource(fn), fn.__name__
