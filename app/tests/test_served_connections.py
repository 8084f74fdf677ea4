"""Connections of ``koinonia serve`` (real Hypercorn): a connection its client has closed
holds no file descriptor in the server."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from tests.served_app import served_app


async def _one_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"GET /health/live HTTP/1.1\r\nHost: app\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await asyncio.wait_for(reader.readexactly(length), 5)
    return head


async def test_a_connection_its_client_closed_between_requests_is_closed_at_once(
    servers, migrated, tmp_path
):
    # The server's keep-alive timeout is 75 s. Before, a connection the client (NGINX
    # recycling an upstream connection, wrk ending a run) closed while idle stayed in
    # CLOSE-WAIT until then, and under load the app ran out of file descriptors.
    async with served_app(servers, tmp_path / "serve.log") as base_url:
        url = urlsplit(base_url)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        try:
            for _ in range(2):  # kept alive between requests, as NGINX's pool does
                assert (await _one_request(reader, writer)).startswith(b"HTTP/1.1 200")
            writer.write_eof()  # the client's side ends while the connection is idle
            # The server's side ends too: end of input here, not after the keep-alive timeout.
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            writer.close()
