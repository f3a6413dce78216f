"""A function's real binary run under the Lambda Runtime API, for one invocation at a time.

The Python twin of the testkit's ``local_lambda.rs``, for the emulator: moto invokes a
Lambda function only in Docker, and Batchline's functions are native binaries. A
``LocalRuntime`` binds a loopback port that answers the Runtime API
(``GET /2018-06-01/runtime/invocation/next``, ``POST .../{id}/response``, ``.../{id}/error``,
``POST .../init/error``), starts the binary with ``AWS_LAMBDA_RUNTIME_API`` pointing at it
and the variables Lambda sets, hands it one payload, and answers what it reported.

Each invocation gets a fresh process (a cold start), which is stopped afterwards: what the
emulator invokes this way (a custom resource's requests, a test's Invoke) is rare, and no
process is left behind between invocations.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

RUNTIME_PREFIX = "/2018-06-01/runtime/"


class Outcome:
    """How an invocation ended: the function's answer, or its error document."""

    def __init__(self, payload: Any, error: bool):
        self.payload = payload
        self.error = error

    def __repr__(self) -> str:
        return f"Outcome(error={self.error}, payload={self.payload!r})"


class _RuntimeApi(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, *_: Any) -> None:  # quiet: the function's own log says what happened
        pass

    def do_GET(self) -> None:
        if self.path != RUNTIME_PREFIX + "invocation/next":
            return self._answer(404, b"{}")
        try:
            request_id, payload = self.server.work.get(timeout=self.server.timeout + 60)
        except queue.Empty:
            return self._answer(500, b"{}")
        deadline_ms = int((time.time() + self.server.timeout) * 1000)
        self.send_response(200)
        self.send_header("Lambda-Runtime-Aws-Request-Id", request_id)
        self.send_header("Lambda-Runtime-Deadline-Ms", str(deadline_ms))
        self.send_header("Lambda-Runtime-Invoked-Function-Arn", self.server.function_arn)
        self.send_header("Lambda-Runtime-Trace-Id", f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Sampled=0")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path[len(RUNTIME_PREFIX):] if self.path.startswith(RUNTIME_PREFIX) else ""
        parts = path.split("/")
        if parts[:1] == ["init"] and parts[1:] == ["error"]:
            self.server.outcome.put(Outcome(_json_or_text(body), error=True))
        elif len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
            self.server.outcome.put(Outcome(_json_or_text(body), error=parts[2] == "error"))
        else:
            return self._answer(404, b"{}")
        self._answer(202, b'{"status":"OK"}')

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, function_arn: str, timeout: float):
        super().__init__(("127.0.0.1", 0), _RuntimeApi)
        self.function_arn = function_arn
        self.timeout = timeout
        self.work: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.outcome: queue.Queue[Outcome] = queue.Queue()


def _json_or_text(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")


def invoke(
    binary: Path,
    *,
    function_name: str,
    function_arn: str,
    payload: bytes,
    environment: dict[str, str],
    timeout: float,
    memory_mb: int = 256,
    log: Path | None = None,
) -> Outcome:
    """Runs ``binary`` as the function ``function_name`` for one invocation with ``payload``.

    ``environment`` is added to what Lambda sets (the function's own variables, the
    endpoint and credentials). Waits up to ``timeout`` seconds (the function's timeout), as
    Lambda would, then stops the process; a timeout is an error outcome, as Lambda reports it.
    """
    server = _Server(function_arn, timeout)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    variables = {
        "PATH": "/usr/bin:/bin",
        "AWS_LAMBDA_RUNTIME_API": address,
        "AWS_LAMBDA_FUNCTION_NAME": function_name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function_name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "local",
        "AWS_LAMBDA_LOG_FORMAT": "JSON",
        **environment,
    }
    output = open(log, "a") if log else subprocess.DEVNULL
    try:
        process = subprocess.Popen([str(binary)], env=variables, stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=output)
    except OSError as error:
        server.shutdown()
        server.server_close()
        if log:
            output.close()  # type: ignore[union-attr]
        return Outcome({"errorType": "Runtime.InvalidEntrypoint",
                        "errorMessage": f"{binary} cannot run ({error}): build it with cargo build --bins"}, error=True)
    try:
        server.work.put((str(uuid.uuid4()), payload))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return server.outcome.get(timeout=0.05)
            except queue.Empty:
                if process.poll() is not None and server.outcome.empty():
                    return Outcome({"errorType": "Runtime.ExitError",
                                    "errorMessage": f"the process exited with status {process.returncode} before answering"},
                                   error=True)
        return Outcome({"errorType": "Sandbox.Timedout", "errorMessage": f"Task timed out after {timeout:.0f} seconds"},
                       error=True)
    finally:
        process.kill()
        process.wait()
        server.shutdown()
        server.server_close()
        if log:
            output.close()  # type: ignore[union-attr]
