#!/usr/bin/env python3
"""A TCP proxy with a slow uplink: what clients send upstream passes at RATE bytes/s in total
(all connections share it); responses pass at full speed. For the downtime benchmark.

    python3 bench/throttle.py LISTEN_PORT UPSTREAM_PORT RATE_BYTES_PER_S
"""
import asyncio
import sys
import time

listen_port, upstream_port, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
next_free = time.monotonic()


async def pace(n):
    global next_free
    start = max(next_free, time.monotonic())
    next_free = start + n / rate
    delay = next_free - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def relay(reader, writer, throttled):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if throttled:
                await pace(len(data))
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def handle(client_reader, client_writer):
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(
        relay(client_reader, server_writer, True),
        relay(server_reader, client_writer, False),
    )


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


asyncio.run(main())
