"""A loopback TCP forwarder whose live connections a test can cut, to simulate a network drop
between client and relay (the relay sees a reset, the client an incomplete read)."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["CuttableProxy", "cuttable_proxy"]


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to a target port; :meth:`cut` resets every live connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cuts = 0
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.base_events.Server | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tcp-proxy")

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("proxy did not start")

    def stop(self) -> None:
        """Close the listener, cancel and await every pipe, then end the loop's thread."""
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def cut(self) -> None:
        """Reset all current connections (new ones still go through). Thread-safe."""
        done = threading.Event()

        def _cut() -> None:
            for writer in list(self._writers):
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    # Linger 0: close with RST, like a dropped NAT entry or a dead Wi-Fi.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.close()
            self._writers.clear()
            self.cuts += 1
            done.set()

        self._loop.call_soon_threadsafe(_cut)
        done.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.update({writer, up_writer})
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


@contextmanager
def cuttable_proxy(target_url: str) -> Iterator[tuple[str, CuttableProxy]]:
    """Yields (proxy base URL, proxy) in front of ``http://127.0.0.1:<port>``."""
    proxy = CuttableProxy(int(target_url.rsplit(":", 1)[1]))
    proxy.start()
    try:
        yield f"http://127.0.0.1:{proxy.port}", proxy
    finally:
        proxy.stop()
