"""``/metrics`` for Prometheus and ``/healthz`` for probes (503 and the reasons when
unhealthy), on a local port."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from broker.runtime.metrics import Metrics


class MetricsServer:
    """A tiny HTTP server: ``/metrics`` for Prometheus, ``/healthz`` for probes."""

    def __init__(self, metrics: Metrics, host: str, port: int,
                 problems: Callable[[], list[str]]) -> None:
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body, ctype, code = generate_latest(registry), CONTENT_TYPE_LATEST, 200
                elif self.path == "/healthz":
                    # Unhealthy says why, one line per problem (a probe shows the body).
                    found = problems()
                    body = ("unhealthy\n" + "".join(f"{p}\n" for p in found) if found
                            else "ok\n").encode()
                    ctype, code = "text/plain; charset=utf-8", 503 if found else 200
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # scrapes every few seconds would drown the log

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
