"""A webhook receiver for the notification tests: an HTTP server on 127.0.0.1 (a free port) in a thread."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer


class Receiver:
    """An HTTP server on 127.0.0.1 (a free port) recording every POSTed JSON body."""

    def __init__(self):
        self.got: list[dict] = []
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                got.append(json.loads(self.rfile.read(n) or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def block(self, timeout_s: float = 5.0) -> str:
        """A webhook block POSTing here, saved on the current Prefect API: what ``pipeline.notify.block`` names."""
        from pipeline import notify

        return notify.save_webhook(f"receiver-{uuid.uuid4().hex[:8]}", self.url, timeout_s=timeout_s)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
