"""Servers for the Stripe tests: localstripe in a subprocess, and a recording HTTP server.

localstripe runs in memory on loopback (its stock command listens on all interfaces and keeps
its state in /tmp). Run as a script, this file is that server: ``python stripe_server.py PORT``.
The recording server stands in for what localstripe lacks (Checkout, Stripe's exact error
bodies) and receives localstripe's webhooks.
"""

import importlib.util
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl

START_TIMEOUT_SECONDS = 15


class LocalStripeUnavailable(Exception):
    """localstripe is not installed or did not answer in time."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(url: str, method: str, body: dict | None = None) -> None:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5):
        pass


@dataclass
class LocalStripe:
    """A running localstripe: its base URL and the process to stop."""

    url: str
    process: subprocess.Popen
    log: Path

    def reset(self) -> None:
        """Forget every object (webhook targets stay registered)."""
        _request(f"{self.url}/_config/data", "DELETE")

    def webhook_register(
        self, webhook_id: str, *, url: str, secret: str, events: list[str] | None
    ) -> None:
        """Send events (all when ``events`` is None, none when empty) to ``url``, signed."""
        body = {"url": url, "secret": secret, "events": events}
        _request(f"{self.url}/_config/webhooks/{webhook_id}", "POST", body)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.unlink(missing_ok=True)


def localstripe_start() -> LocalStripe:
    """Start localstripe on a free loopback port and wait until it answers."""
    if importlib.util.find_spec("localstripe") is None:
        raise LocalStripeUnavailable("localstripe is not installed (it is a dev dependency)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.NamedTemporaryFile(prefix="localstripe-", suffix=".log", delete=False) as log:
        log_path = Path(log.name)
        process = subprocess.Popen(
            [sys.executable, __file__, str(port)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    server = LocalStripe(url=url, process=process, log=log_path)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            server.reset()
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)  # waiting for a process to listen; no test clock involved
            continue
        return server
    reason = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
    server.stop()
    raise LocalStripeUnavailable(f"localstripe did not start on {url}: {reason[0]}")


# --- Recording HTTP server -------------------------------------------------------------------


@dataclass
class Recorded:
    """One request as the server received it; ``params`` are the form or query fields, flat
    (``metadata[payment_id]``), exactly as Stripe's client encodes them."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)


Responder = Callable[[Recorded], tuple[int, dict]]


class RecordingServer:
    """An HTTP server on a loopback port, in a thread, that records every request and answers
    with ``respond(request) -> (status, json_body)``. ``wait_for`` blocks until a request
    matching a predicate arrives (or the timeout passes)."""

    def __init__(self, respond: Responder) -> None:
        self.requests: list[Recorded] = []
        self._arrived = threading.Condition()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                path, _, query = self.path.partition("?")
                form = body.decode("utf-8", "replace") if self._is_form() else ""
                request = Recorded(
                    method=self.command,
                    path=path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    params=dict(parse_qsl(form or query, keep_blank_values=True)),
                )
                status, answer = respond(request)
                # Recorded before answering: once the client has its answer, the test sees it.
                with recorder._arrived:
                    recorder.requests.append(request)
                    recorder._arrived.notify_all()
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _is_form(self) -> bool:
                kind = self.headers.get("Content-Type", "")
                return kind.startswith("application/x-www-form-urlencoded")

            do_GET = do_POST = do_DELETE = _handle

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    def __enter__(self) -> "RecordingServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def wait_for(self, matches: Callable[[Recorded], bool], timeout: float = 10) -> Recorded:
        with self._arrived:
            found = self._arrived.wait_for(
                lambda: next((r for r in self.requests if matches(r)), None), timeout=timeout
            )
        if found is None:
            raise AssertionError(f"no matching request within {timeout} s: {self.requests!r}")
        return found


def _serve_in_memory(port: int) -> None:
    from aiohttp import web
    from localstripe import resources
    from localstripe.server import app

    resources.Store.dump_to_disk = lambda self: None
    resources.Store.try_load_from_disk = lambda self: None
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    _serve_in_memory(int(sys.argv[1]))
