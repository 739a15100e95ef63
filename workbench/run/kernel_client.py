"""A kernel manager whose client polls its sockets in short slices, so a message that has
arrived is read within a slice even when the wake-up for it was lost.

pyzmq's asyncio sockets wake on ZeroMQ's edge-triggered file descriptor, and that wake-up is
sometimes missed: a paper page's widget cell, executed by nbclient, then sat with its
execute_reply already in the socket until the cell's whole timeout had passed (118 s of a 120 s
timeout in about one check in eight here; pyzmq 27.3, jupyter_client 8.10, ipykernel 7.4). An
asyncio poll that times out checks the socket once more, so polling in slices bounds such a stall
by the slice. The runner (papermill) and the workshop's page check both execute through it.
"""

from __future__ import annotations

import time
from queue import Empty
from typing import Any

from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.manager import AsyncKernelManager
from traitlets import DottedObjectName, Type

POLL_SLICE_SECONDS = 0.5


class SlicedPollChannel(AsyncZMQSocketChannel):
    """A kernel channel whose `get_msg` waits in slices of `POLL_SLICE_SECONDS`."""

    async def get_msg(self, timeout: float | None = None) -> dict[str, Any]:  # type: ignore[override]
        """The next message, waiting at most `timeout` seconds (None: until one comes).

        Args:
            timeout: seconds to wait in all; None waits for as long as it takes.

        Returns:
            The deserialised message.

        Raises:
            queue.Empty: no message came within `timeout`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = POLL_SLICE_SECONDS if deadline is None else max(0.0, deadline - time.monotonic())
            if await self.socket.poll(int(1000 * min(POLL_SLICE_SECONDS, left))):
                return await self._recv()
            if deadline is not None and time.monotonic() >= deadline:
                raise Empty


class SlicedPollKernelClient(AsyncKernelClient):
    """jupyter_client's asyncio kernel client with `SlicedPollChannel`s."""

    shell_channel_class = Type(SlicedPollChannel)  # type: ignore[assignment]
    iopub_channel_class = Type(SlicedPollChannel)  # type: ignore[assignment]
    stdin_channel_class = Type(SlicedPollChannel)  # type: ignore[assignment]
    control_channel_class = Type(SlicedPollChannel)  # type: ignore[assignment]


class SlicedPollKernelManager(AsyncKernelManager):
    """jupyter_client's asyncio kernel manager, handing out `SlicedPollKernelClient`s (pass it as
    nbclient's or papermill's `kernel_manager_class`)."""

    client_class = DottedObjectName("workbench.run.kernel_client.SlicedPollKernelClient")
    client_factory = Type(SlicedPollKernelClient, klass=AsyncKernelClient)
