"""The latency proxy the client tests rely on really adds the round trip it promises."""

from __future__ import annotations

import socket
import threading
import time

from latency_proxy import LatencyProxy


def test_each_round_trip_takes_at_least_the_configured_time() -> None:
    echo = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = echo.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    with LatencyProxy(echo.getsockname(), rtt=0.04) as proxy, \
            socket.create_connection(("127.0.0.1", proxy.port)) as c:
        times = []
        for i in range(5):
            start = time.monotonic()
            c.sendall(b"ping %d" % i)
            assert c.recv(100) == b"ping %d" % i
            times.append(time.monotonic() - start)
    echo.close()
    assert min(times) >= 0.04
