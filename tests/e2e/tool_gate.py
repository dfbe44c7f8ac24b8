"""An HTTP tool the test controls: a pipeline step that calls it waits until the test's action has finished.

Lets an e2e test change the fleet between two steps of one run (delete a model's app, kill a replica) without
racing the run: the step after the gate starts only once the change is complete.
"""

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.ports import free_port


class ToolGate:
    """A loopback HTTP server; each POST runs ``on_call`` (set by a test) and then answers ``{"passed": n}``."""

    def __init__(self) -> None:
        self.on_call: Callable[[], None] = lambda: None
        self.calls = 0
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                gate.calls += 1
                gate.on_call()
                body = json.dumps({"passed": gate.calls}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/gate"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
