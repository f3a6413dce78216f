"""The local AWS emulator: moto in server mode behind a thin protocol adapter.

moto speaks the real AWS wire protocols for almost everything Batchline calls. Where the
AWS SDK for Rust and moto disagree (see ../shared/EMULATOR.md), the adapter in front of
moto's WSGI application makes the emulator behave as AWS does:

* CloudWatch: the Rust SDK speaks Smithy RPC v2 CBOR, moto only the JSON protocol. CBOR
  requests (gzip bodies included) are translated to JSON, and replies back to CBOR, with
  timestamps as CBOR tag 1 and errors as ``{"__type", "message"}`` maps.
* CloudWatch GetMetricStatistics: moto counts every metric whose dimensions include the
  ones asked for; AWS only the metric with exactly those dimensions. The adapter narrows
  moto's answer to the exact dimension set.
* Batch DescribeJobs: moto reports ``container.vcpus`` of Fargate jobs as a float, which
  the Batch model (and so the Rust SDK) types as an integer, and leaves out what AWS
  reports for a Fargate job: ``resourceRequirements`` (with the job's overrides applied),
  ``image``, the roles, network and log configuration, ``platformCapabilities``. The
  adapter completes each job from moto's own job record, as AWS would report it, and drops
  ``vcpus``/``memory`` for Fargate jobs (AWS reports their size only as requirements).
* Batch CreateComputeEnvironment without ``serviceRole``: AWS falls back to the
  service-linked role; moto requires the field. The adapter creates the service-linked
  role for batch.amazonaws.com (as AWS does) and fills in its ARN.
* DynamoDB: moto checks a condition and then writes without a lock, and the server is
  threaded, so two conditional writes expecting the same version could both succeed.
  DynamoDB applies each write atomically; the adapter serves DynamoDB requests one at a
  time, so conditional writes are atomic here too.
* DynamoDB TransactWriteItems: moto backs up a whole table (a deep copy) for every item a
  transaction writes, so a transaction's cost grew with the table (a 100-item transaction
  on a table of a few thousand items took seconds). The adapter backs up only the items
  the transaction names and puts them back if it is cancelled (see
  ``transactions_back_up_their_items``); what a transaction does is unchanged. moto also
  parses a condition expression again for every item it is checked on; the adapter keeps
  the parsed conditions of the last thousand (expression, names, values) it saw.
* Batch SubmitJob's ``retryStrategy``: moto drops it. The adapter keeps it on moto's job
  record, and DescribeJobs reports the job's retry strategy — its own, else its job
  definition's — as AWS does (the Batch event player plays the retries it allows).
* Batch CancelJob and TerminateJob: moto without Docker has already finished every job
  (SUCCEEDED) by the time anyone could stop it, so both would be no-ops. Locally a job has
  not run until the Batch event player plays it, so the adapter applies them as AWS does to
  a job that has not finished: the job becomes FAILED with the given reason.
* Batch DescribeJobs' ``container.environment``: moto appends to one list an array's
  parent and children share, once per description, so a child of a large array came back
  with thousands of variables. Each job now reports its own: its submission's, then its
  job definition's (see ``unshared_job_environment``).
* Batch ListJobs by ``arrayJobId``: moto lists an array's children in one unpaged answer,
  without ``arrayProperties.index`` or ``container.reason``. The adapter answers it as AWS
  does: in index order, in pages (``maxResults``, ``nextToken``), ``jobStatus`` filtering (RUNNING
  only without one),
  each child with its index, status, times, exit code and reason as played. (A queue's
  listing is still moto's, unpaged. moto also starts a thread per child at SubmitJob, so
  an array of thousands is slow to submit locally.)

* SQS SendMessage: moto counts every message of the queue for each send (see
  ``sends_without_counting_the_queue``), so a send cost grew with the queue's backlog;
  the adapter skips the count while sending. What a send does is unchanged.

* EventBridge delivery: moto parses each input path's JSONPath again for every event it
  delivers, building a parser each time; the adapter keeps the parsed paths (see
  ``input_paths_parsed_once``).

Two additions for tests and the local run, which are not AWS APIs:
``GET /_batchline/cloudwatch/metrics?namespace=NS`` answers ``{"metrics": N}``, how many
metrics (name and dimension values) the namespace holds, in one pass (moto's ListMetrics
compares every datum with every metric found, which takes minutes after a benchmark).
``GET /_batchline/default-network`` answers ``{"vpc", "subnets", "securityGroups"}`` for
the emulator's default VPC (moto checks that subnets and security groups exist, and
their ids are random), so callers need no EC2 client to find them. ``POST
/_batchline/batch/hold`` with ``{"jobId", "waitedSeconds", "region"}`` puts a job back in RUNNABLE,
created that many seconds ago, and keeps it there until it is cancelled or terminated: a
job that cannot start, for the stuck-job watch (the Batch event player plays only its
RUNNABLE event). ``POST /_batchline/batch/played`` with ``{"region", "jobs": [detail,
...]}`` records how the player ended jobs (each a job state change event's ``detail``):
from then on DescribeJobs reports the job's status, reason, times, attempts (their
``taskArn`` naming the cluster its tasks ran on) and exit as played, ListJobs its status,
and stopping it changes nothing — as AWS reports a job that ran. ``POST
/_batchline/batch/unplayed`` with ``{"queues": [ARN, ...]}`` makes jobs submitted to those
queues from then on wait in RUNNABLE until they are played and settled (or stopped), instead
of moto's immediate SUCCEEDED: what the long-running local stack uses, so a client polling a
job sees it wait, then end as played.

The stack's functions as native binaries (``local_functions.py``): ``POST
/_batchline/lambda/runtimes`` with ``{"functions": {"BootstrapFunction": BINARY}, "log":
FILE}`` registers which binary runs a function (by its logical id in a stack, or its name).
The Invoke API, EventBridge rules' Lambda targets and CloudFormation custom resources then
run that binary under a local Lambda Runtime API. Custom resources get a ResponseURL
``/_batchline/cloudformation/answers/TOKEN`` served here, and the Create, Update, Delete,
cleanup and rollbacks CloudFormation would send (see that module's docs).

IAM, for tests: calls signed ``iam.<principal>.<stack>`` are evaluated against the
template's policies for that stack and refused as AWS would (``devtools/iam/enforce.py``).

Fault injection, for tests, switchable at run time and scoped so that tests sharing the
emulator are not affected. ``POST /_batchline/faults/SCOPE`` with
``{"seed": N, "rules": {"dynamodb:PutItem": {"fail": 0.2, "lose": 0.1}, ...}}`` turns
faults on for requests sent under the endpoint ``http://HOST:PORT/_faults/SCOPE`` (point
an SDK configuration there); ``GET`` the same path answers how many calls of each
operation were failed and lost, ``DELETE`` turns the scope off. Per operation (``service:
Operation``, e.g. ``batch:SubmitJob``, ``cloudwatch:PutMetricData``; ``*`` for any), a
seeded share of calls fails *before* reaching the emulator and a share is *lost after* it
took effect; both answer HTTP 500, as AWS does for an internal error.

Usage::

    python server.py [--port PORT] [--parent-pid PID]

Prints ``http://127.0.0.1:PORT`` on its first line once it accepts requests. With
``--parent-pid`` it exits by itself when that process is gone, so a test run that ends
in any way leaves no emulator behind.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import io
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterable

# Read by moto when it builds the IAM backend: AWS managed policies such as
# AmazonECSTaskExecutionRolePolicy exist only when this is set.
os.environ.setdefault("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")

import botocore.loaders  # noqa: E402
import botocore.model  # noqa: E402
import botocore.parsers  # noqa: E402
import cbor2  # noqa: E402
from moto.core.config import default_user_config  # noqa: E402
from moto.moto_server.werkzeug_app import (  # noqa: E402
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server  # noqa: E402
from werkzeug.test import EnvironBuilder, run_wsgi_app  # noqa: E402

import local_functions  # noqa: E402  (beside this file)

CLOUDWATCH_TARGET_PREFIX = "GraniteServiceVersion20100801"
INVOCATION_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations$")
CBOR_PATH = re.compile(r"^/service/GraniteServiceVersion20100801/operation/(\w+)$")
DEFAULT_CREDENTIAL = (
    "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/{service}/aws4_request, "
    "SignedHeaders=host, Signature=0"
)

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]


class InnerResponse:
    """A reply from the wrapped moto application, fully read."""

    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def status_code(self) -> int:
        return int(self.status.split(" ", 1)[0])


def call_app(app: WsgiApp, method: str, path: str, headers: dict[str, str], body: bytes) -> InnerResponse:
    """Runs one request through a WSGI application in-process (no network hop)."""
    builder = EnvironBuilder(method=method, path=path, headers=headers, data=body)
    environ = builder.get_environ()
    # moto reads this to recover header spelling; EnvironBuilder does not set it.
    environ.setdefault("moto.preserved_header_names", {})
    app_iter, status, response_headers = run_wsgi_app(app, environ, buffered=True)
    try:
        payload = b"".join(app_iter)
    finally:
        close = getattr(app_iter, "close", None)
        if close:
            close()
    return InnerResponse(status, list(response_headers.items()), payload)


def credential_scope_service(authorization: str, service: str) -> str:
    """The same Authorization header, signed for another service (moto routes on it)."""
    match = re.search(r"Credential=([^/]+)/(\d+)/([^/]+)/[^/]+/aws4_request", authorization or "")
    if not match:
        return DEFAULT_CREDENTIAL.format(service=service)
    key, date, region = match.groups()
    return (
        f"AWS4-HMAC-SHA256 Credential={key}/{date}/{region}/{service}/aws4_request, "
        "SignedHeaders=host, Signature=0"
    )


def credential_scope_region(authorization: str) -> str:
    """The region a request was signed for (us-east-1 when unsigned)."""
    match = re.search(r"Credential=[^/]+/\d+/([^/]+)/", authorization or "")
    return match.group(1) if match else "us-east-1"


class CloudWatchCbor:
    """Translates CloudWatch's Smithy RPC v2 CBOR protocol to and from the JSON protocol."""

    def __init__(self) -> None:
        loader = botocore.loaders.Loader()
        definition = loader.load_service_model("cloudwatch", "service-2")
        self.model = botocore.model.ServiceModel(definition, service_name="cloudwatch")
        self.parser = botocore.parsers.JSONParser()

    def handle(self, app: WsgiApp, environ: dict, operation: str) -> tuple[int, bytes]:
        body = read_body(environ)
        if environ.get("HTTP_CONTENT_ENCODING", "").lower() == "gzip":
            body = gzip.decompress(body)
        try:
            request = cbor2.loads(body) if body else {}
        except Exception as err:  # noqa: BLE001 - any decoding failure is the caller's
            return 400, encode_error("SerializationException", f"request is not CBOR: {err}")
        headers = {
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": f"{CLOUDWATCH_TARGET_PREFIX}.{operation}",
            "Authorization": environ.get("HTTP_AUTHORIZATION", DEFAULT_CREDENTIAL.format(service="monitoring")),
            "Host": environ.get("HTTP_HOST", "localhost"),
        }
        reply = call_app(app, "POST", "/", headers, json.dumps(to_json_value(request)).encode())
        if reply.status_code >= 400:
            return reply.status_code, translate_error(reply.body)
        try:
            shape = self.model.operation_model(operation).output_shape
        except Exception:  # noqa: BLE001 - unknown operation
            return 400, encode_error("UnknownOperationException", f"unknown operation {operation}")
        parsed = self.parser.parse(
            {"status_code": reply.status_code, "headers": {}, "body": reply.body}, shape
        ) if shape is not None else {}
        parsed.pop("ResponseMetadata", None)
        return 200, cbor2.dumps(parsed, datetime_as_timestamp=True, timezone=datetime.timezone.utc)


def to_json_value(value: Any) -> Any:
    """CBOR-decoded values as the JSON protocol carries them (timestamps as epoch seconds)."""
    if isinstance(value, dict):
        return {key: to_json_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_json_value(item) for item in value]
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.timestamp()
    if isinstance(value, (bytes, bytearray)):
        import base64

        return base64.b64encode(value).decode()
    return value


def translate_error(body: bytes) -> bytes:
    """moto's JSON (or XML) error body as a CBOR error map."""
    code, message = "InternalFailure", body.decode(errors="replace")
    try:
        error = json.loads(body)
        code = error.get("__type", code).split("#")[-1]
        message = error.get("message") or error.get("Message") or message
    except ValueError:
        found = re.search(rb"<Code>([^<]+)</Code>", body)
        if found:
            code = found.group(1).decode()
        found = re.search(rb"<Message>([^<]*)</Message>", body)
        if found:
            message = found.group(1).decode()
    return encode_error(code, message)


def encode_error(code: str, message: str) -> bytes:
    return cbor2.dumps({"__type": code, "message": message})


def read_body(environ: dict) -> bytes:
    """A request's body. One without Content-Length has none unless it is chunked: reading
    on would wait for the client to close a connection it keeps open (an S3 GET)."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    stream = environ["wsgi.input"]
    if length:
        return stream.read(length)
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    return stream.read() if chunked or environ.get("wsgi.input_terminated") else b""


# Container properties AWS reports in DescribeJobs that moto leaves out.
REPORTED_CONTAINER_PROPERTIES = (
    "image", "jobRoleArn", "executionRoleArn", "networkConfiguration", "logConfiguration",
    "fargatePlatformConfiguration", "runtimePlatform", "secrets", "ephemeralStorage",
)


def complete_job(job: dict[str, Any], authorization: str) -> dict[str, Any]:
    """One DescribeJobs entry as AWS reports it (see the module docs)."""
    record = find_job(job.get("jobId", ""), authorization)
    container = job.get("container")
    if record is None or not isinstance(container, dict):
        return job
    definition = record.job_definition
    properties = definition.container_properties or {}
    fargate = "FARGATE" in (definition.platform_capabilities or [])
    job["platformCapabilities"] = list(definition.platform_capabilities or [])
    for name in REPORTED_CONTAINER_PROPERTIES:
        if name in properties and name not in container:
            container[name] = properties[name]
    requirements = {r["type"]: r["value"] for r in properties.get("resourceRequirements", [])}
    for override in (record.container_overrides or {}).get("resourceRequirements", []):
        requirements[override["type"]] = override["value"]
    if requirements:
        container["resourceRequirements"] = [{"type": k, "value": v} for k, v in requirements.items()]
    played = getattr(record, "batchline_played", None)
    if played:
        # What the Batch event player played is what the job did (see the module docs).
        for name in ("status", "statusReason", "startedAt", "stoppedAt", "attempts"):
            if name in played:
                job[name] = played[name]
        for name in ("exitCode", "reason", "taskArn", "logStreamName"):
            if name in played.get("container", {}):
                container[name] = played["container"][name]
    strategy = getattr(record, "batchline_retry_strategy", None) or definition.retry_strategy
    if strategy:
        job["retryStrategy"] = strategy
    if fargate:
        container.pop("vcpus", None)
        container.pop("memory", None)
    elif isinstance(container.get("vcpus"), float):
        container["vcpus"] = int(container["vcpus"])
    return job


def child_summary(child: Any) -> dict[str, Any]:
    """One array child as ListJobs summarises it on AWS (what the player played, else moto's)."""
    summary = child.describe_short()
    played = getattr(child, "batchline_played", None) or {}
    for name in ("status", "statusReason", "startedAt", "stoppedAt"):
        if name in played:
            summary[name] = played[name]
    container = {name: played["container"][name] for name in ("exitCode", "reason")
                 if name in played.get("container", {})}
    if container:
        summary["container"] = container
    summary["arrayProperties"] = {"index": child.array_properties.get("index", 0)}
    return summary


def find_job(job_id: str, authorization: str) -> Any:
    """moto's record of a job, in the account and region the request was signed for."""
    from moto.batch.models import batch_backends
    from moto.iam.models import get_account_id_from

    match = re.search(r"Credential=([^/]+)/\d+/([^/]+)/", authorization or "")
    access_key, region = match.groups() if match else ("AKIAEXAMPLE", "us-east-1")
    backend = batch_backends[get_account_id_from(access_key)][region]
    return backend.get_job_by_id(job_id)


def keep_runnable(record: Any, waited_seconds: float) -> None:
    """Puts a job in RUNNABLE, created ``waited_seconds`` ago, and keeps it there."""
    record.batchline_played = None
    # moto moves a job through its states as it is read; without a way out of RUNNABLE it
    # stays there until stopped (CancelJob/TerminateJob make it FAILED) or played.
    record._transitions = [(a, b) for a, b in record._transitions if a != "RUNNABLE"]
    record.status = "RUNNABLE"
    record.job_created_at = datetime.datetime.now() - datetime.timedelta(seconds=waited_seconds)
    record.job_stopped = False
    record.job_stopped_reason = None
    record.exit_code = None
    record.attempts = []
    record.latest_attempt = None
    # A job that has not started has written no log yet.
    record.log_stream_name = None


def find_any_job(job_id: str, region: str) -> Any:
    """moto's record of a job in the default account (admin calls are not signed)."""
    from moto.batch.models import batch_backends
    from moto.core import DEFAULT_ACCOUNT_ID

    return batch_backends[DEFAULT_ACCOUNT_ID][region].get_job_by_id(job_id)


BATCH_OPERATIONS = {
    "submitjob": "SubmitJob", "terminatejob": "TerminateJob", "canceljob": "CancelJob",
    "listjobs": "ListJobs", "describejobs": "DescribeJobs",
    "registerjobdefinition": "RegisterJobDefinition", "deregisterjobdefinition": "DeregisterJobDefinition",
    "createjobqueue": "CreateJobQueue", "createcomputeenvironment": "CreateComputeEnvironment",
}
FAULT_SCOPE = re.compile(r"^/_faults/([A-Za-z0-9_.-]+)(/.*)?$")
FAULT_ADMIN = re.compile(r"^/_batchline/faults/([A-Za-z0-9_.-]+)$")


def operation_of(environ: dict, path: str) -> str:
    """``service:Operation`` of a request, from its target header or REST path."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target.startswith("DynamoDB_20120810."):
        return "dynamodb:" + target.split(".", 1)[1]
    if target.startswith("AWSEvents."):
        return "events:" + target.split(".", 1)[1]
    if target.startswith(CLOUDWATCH_TARGET_PREFIX + "."):
        return "cloudwatch:" + target.split(".", 1)[1]
    cbor_call = CBOR_PATH.match(path)
    if cbor_call:
        return "cloudwatch:" + cbor_call.group(1)
    if target.startswith("AmazonSQS."):
        return "sqs:" + target.split(".", 1)[1]
    if path.startswith("/v1/"):
        name = path[len("/v1/"):].strip("/")
        return "batch:" + BATCH_OPERATIONS.get(name, name)
    query = environ.get("QUERY_STRING", "")
    if "x-id=" in query:
        # S3's REST calls name the operation in the query (``?x-id=GetObject``).
        return "s3:" + query.split("x-id=", 1)[1].split("&", 1)[0]
    if "list-type=2" in query:
        return "s3:ListObjectsV2"
    return "other:" + path


class FaultScope:
    """One scope's rules, its seeded random source, and what it did."""

    def __init__(self, seed: int, rules: dict[str, dict[str, float]]):
        import random

        self.random = random.Random(seed)
        self.rules = rules
        self.counts: dict[str, dict[str, int]] = {}
        self.lock = threading.Lock()

    def decide(self, operation: str) -> str:
        """``fail``, ``lose`` or ``pass`` for one call."""
        rule = self.rules.get(operation) or self.rules.get("*")
        with self.lock:
            draw = self.random.random()
            outcome = "pass"
            if rule:
                if draw < rule.get("fail", 0.0):
                    outcome = "fail"
                elif draw < rule.get("fail", 0.0) + rule.get("lose", 0.0):
                    outcome = "lose"
            counts = self.counts.setdefault(operation, {"calls": 0, "fail": 0, "lose": 0})
            counts["calls"] += 1
            if outcome != "pass":
                counts[outcome] += 1
            return outcome


class Faults:
    """WSGI middleware: injects the scoped faults tests ask for, in front of everything else."""

    def __init__(self, app: WsgiApp):
        self.app = app
        self.scopes: dict[str, FaultScope] = {}

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        admin = FAULT_ADMIN.match(path)
        if admin:
            return self.admin(admin.group(1), environ, start_response)
        scoped = FAULT_SCOPE.match(path)
        if not scoped:
            return self.app(environ, start_response)
        # The request as if sent to the emulator itself (moto reads the raw URI too).
        prefix = path[: len(path) - len(scoped.group(2) or "")]
        environ = dict(environ, PATH_INFO=scoped.group(2) or "/")
        for raw in ("REQUEST_URI", "RAW_URI"):
            if environ.get(raw, "").startswith(prefix):
                environ[raw] = environ[raw][len(prefix):] or "/"
        scope = self.scopes.get(scoped.group(1))
        operation = operation_of(environ, environ["PATH_INFO"])
        outcome = scope.decide(operation) if scope else "pass"
        if outcome == "pass":
            return self.app(environ, start_response)
        if outcome == "lose":
            # The call takes effect; its reply never reaches the caller.
            body = read_body(environ)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            list(self.app(environ, lambda *_args, **_kwargs: None))
        return self.injected(operation, start_response)

    def injected(self, operation: str, start_response: Callable) -> list[bytes]:
        message = f"injected fault ({operation})"
        if operation.startswith("cloudwatch:"):
            return respond(start_response, 500, encode_error("InternalFailure", message), {
                "Content-Type": "application/cbor", "smithy-protocol": "rpc-v2-cbor",
            })
        body = json.dumps({"__type": "InternalServerError", "message": message}).encode()
        return respond(start_response, 500, body, {
            "Content-Type": "application/x-amz-json-1.0", "x-amzn-ErrorType": "InternalServerError",
        })

    def admin(self, name: str, environ: dict, start_response: Callable) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method == "POST":
            document = json.loads(read_body(environ) or b"{}")
            self.scopes[name] = FaultScope(int(document.get("seed", 0)), document.get("rules", {}))
            return respond(start_response, 200, b"{}", {"Content-Type": "application/json"})
        if method == "DELETE":
            self.scopes.pop(name, None)
            return respond(start_response, 200, b"{}", {"Content-Type": "application/json"})
        scope = self.scopes.get(name)
        counts = json.dumps(scope.counts if scope else {}).encode()
        return respond(start_response, 200, counts, {"Content-Type": "application/json"})


class Adapter:
    """WSGI middleware in front of moto: fixes what the Rust SDK and moto disagree on."""

    def __init__(self, app: WsgiApp):
        self.app = app
        self.cloudwatch = CloudWatchCbor()
        self.lock = threading.Lock()
        self.dynamodb = threading.Lock()
        # Queues (ARNs) whose new jobs wait in RUNNABLE until the player plays them.
        self.unplayed: set[str] = set()

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        cbor_call = CBOR_PATH.match(path)
        if cbor_call and method == "POST":
            status, payload = self.cloudwatch.handle(self.app, environ, cbor_call.group(1))
            return respond(start_response, status, payload, {
                "Content-Type": "application/cbor",
                "smithy-protocol": "rpc-v2-cbor",
            })
        if path == "/_batchline/default-network" and method == "GET":
            document = json.dumps(self.default_network()).encode()
            return respond(start_response, 200, document, {"Content-Type": "application/json"})
        if path == "/_batchline/cloudwatch/metrics" and method == "GET":
            return self.metric_count(environ, start_response)
        if path == "/_batchline/batch/hold" and method == "POST":
            return self.hold_job(environ, start_response)
        if path == "/_batchline/batch/played" and method == "POST":
            return self.played_jobs(environ, start_response)
        if path == "/_batchline/batch/unplayed" and method == "POST":
            return self.unplayed_queues(environ, start_response)
        if path.startswith("/_batchline/cloudformation/answers/") and method == "PUT":
            taken = local_functions.take_answer(path.rsplit("/", 1)[1], read_body(environ))
            return respond(start_response, 200 if taken else 404, b"", {})
        if path == "/_batchline/lambda/runtimes" and method == "POST":
            local_functions.register_runtimes(json.loads(read_body(environ) or b"{}"))
            return respond(start_response, 200, b"{}", {"Content-Type": "application/json"})
        invocation = INVOCATION_PATH.match(path)
        if invocation and method == "POST":
            answered = self.invoke_locally(environ, invocation.group(1), start_response)
            if answered is not None:
                return answered
        if path == "/v1/describejobs" and method == "POST":
            return self.describe_jobs(environ, start_response)
        if path == "/v1/listjobs" and method == "POST":
            return self.list_jobs(environ, start_response)
        if path in ("/v1/terminatejob", "/v1/canceljob") and method == "POST":
            return self.stop_job(environ, start_response)
        if path == "/v1/submitjob" and method == "POST":
            return self.submit_job(environ, start_response)
        if path == "/v1/createcomputeenvironment" and method == "POST":
            return self.create_compute_environment(environ, start_response)
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_20120810."):
            # One DynamoDB request at a time (see the module docs).
            with self.dynamodb:
                return list(self.app(environ, start_response))
        return self.app(environ, start_response)

    def forward(self, environ: dict, body: bytes) -> InnerResponse:
        headers = {
            name[5:].replace("_", "-").title(): value
            for name, value in environ.items()
            if name.startswith("HTTP_")
        }
        headers["Content-Type"] = environ.get("CONTENT_TYPE", "application/json")
        headers.pop("Content-Length", None)
        return call_app(self.app, environ["REQUEST_METHOD"], environ["PATH_INFO"], headers, body)

    def describe_jobs(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        reply = self.forward(environ, read_body(environ))
        payload = reply.body
        if reply.status_code == 200:
            document = json.loads(payload)
            authorization = environ.get("HTTP_AUTHORIZATION", "")
            document["jobs"] = [complete_job(job, authorization) for job in document.get("jobs", [])]
            payload = json.dumps(document).encode()
        return respond(start_response, reply.status_code, payload, dict(reply.headers))

    def list_jobs(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        body = read_body(environ)
        if json.loads(body or b"{}").get("arrayJobId"):
            return self.list_array_children(environ, body, start_response)
        reply = self.forward(environ, body)
        return respond(start_response, reply.status_code, reply.body, dict(reply.headers))

    def list_array_children(self, environ: dict, body: bytes, start_response: Callable) -> Iterable[bytes]:
        """ListJobs by ``arrayJobId`` as AWS answers it: the children in index order with
        their ``arrayProperties.index``, status, times, exit code and reason (as played),
        ``jobStatus`` filtering them (RUNNING when neither it nor ``filters`` is given), in pages of ``maxResults`` (100 by default, at most
        1,000) continued by ``nextToken``. moto lists them unpaged, without index or reason."""
        request = json.loads(body or b"{}")
        parent = find_job(request.get("arrayJobId", ""), environ.get("HTTP_AUTHORIZATION", ""))
        children = sorted(getattr(parent, "_child_jobs", None) or [], key=lambda c: c.array_properties.get("index", 0))
        summaries = [child_summary(child) for child in children]
        # As AWS: without a status (or filters) only RUNNING children are listed.
        status = request.get("jobStatus") or (None if request.get("filters") else "RUNNING")
        if status:
            summaries = [summary for summary in summaries if summary["status"] == status]
        start = int(request.get("nextToken") or 0)
        size = max(1, min(int(request.get("maxResults") or 100), 1000))
        document: dict[str, Any] = {"jobSummaryList": summaries[start:start + size]}
        if start + size < len(summaries):
            document["nextToken"] = str(start + size)
        return respond(start_response, 200, json.dumps(document).encode(), {"Content-Type": "application/json"})

    def submit_job(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        body = read_body(environ)
        reply = self.forward(environ, body)
        if reply.status_code == 200:
            strategy = json.loads(body or b"{}").get("retryStrategy")
            record = find_job(json.loads(reply.body).get("jobId", ""), environ.get("HTTP_AUTHORIZATION", ""))
            if record is not None and strategy:
                record.batchline_retry_strategy = strategy
            if record is not None and record.job_queue.arn in self.unplayed:
                with self.lock:
                    keep_runnable(record, 0)
        return respond(start_response, reply.status_code, reply.body, dict(reply.headers))

    def stop_job(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        body = read_body(environ)
        reply = self.forward(environ, body)
        if reply.status_code == 200:
            request = json.loads(body or b"{}")
            record = find_job(request.get("jobId", ""), environ.get("HTTP_AUTHORIZATION", ""))
            # Stopping an array's parent stops its children too, as on AWS.
            for job in [record, *(getattr(record, "_child_jobs", None) or [])] if record is not None else []:
                played = getattr(job, "batchline_played", None)
                if not played and job.status in ("SUCCEEDED", "SUBMITTED", "PENDING", "RUNNABLE"):
                    job.status = "FAILED"
                    job.job_stopped_reason = request.get("reason", "")
        return respond(start_response, reply.status_code, reply.body, dict(reply.headers))

    def invoke_locally(self, environ: dict, name: str, start_response: Callable) -> Iterable[bytes] | None:
        """Lambda Invoke of a function with a registered binary (``local_functions``); None for
        any other function, which moto answers."""
        from moto.awslambda.utils import get_backend as get_lambda_backend

        region = credential_scope_region(environ.get("HTTP_AUTHORIZATION", ""))
        try:
            function = get_lambda_backend("123456789012", region).get_function(urllib.parse.unquote(name))
        except Exception:  # noqa: BLE001 — unknown to moto: moto answers its own error
            return None
        if local_functions.runtime_for(function, "123456789012", region) is None:
            return None
        outcome = local_functions.invoke_function(function, "123456789012", region, read_body(environ))
        headers = {"Content-Type": "application/json", "X-Amz-Executed-Version": "$LATEST"}
        if outcome.error:
            headers["X-Amz-Function-Error"] = "Unhandled"
        return respond(start_response, 200, json.dumps(outcome.payload).encode(), headers)

    def metric_count(self, environ: dict, start_response: Callable) -> list[bytes]:
        """``{"metrics": N}``: how many metrics (name and dimension values) a namespace holds.

        moto's ListMetrics compares every datum with every metric found so far, which takes
        minutes once a benchmark has put hundreds of thousands of datums; this is one pass.
        """
        from urllib.parse import parse_qs

        from moto.cloudwatch.models import cloudwatch_backends
        from moto.core import DEFAULT_ACCOUNT_ID

        query = parse_qs(environ.get("QUERY_STRING", ""))
        namespace = query.get("namespace", [""])[0]
        region = query.get("region", ["us-east-1"])[0]
        backend = cloudwatch_backends[DEFAULT_ACCOUNT_ID][region]
        metrics = {
            (datum.name, tuple(sorted((d.name, d.value) for d in datum.dimensions)))
            for datum in backend.metric_data
            if datum.namespace == namespace
        }
        document = json.dumps({"metrics": len(metrics)}).encode()
        return respond(start_response, 200, document, {"Content-Type": "application/json"})

    def hold_job(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """Puts a job back in RUNNABLE, created ``waitedSeconds`` ago, and keeps it there."""
        request = json.loads(read_body(environ) or b"{}")
        record = find_any_job(request.get("jobId", ""), request.get("region", "us-east-1"))
        if record is None:
            body = json.dumps({"message": f"no job {request.get('jobId')!r}"}).encode()
            return respond(start_response, 404, body, {"Content-Type": "application/json"})
        with self.lock:
            keep_runnable(record, float(request.get("waitedSeconds", 0)))
        return respond(start_response, 200, b"{}", {"Content-Type": "application/json"})

    def unplayed_queues(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """From now on, jobs submitted to these queues wait in RUNNABLE until played."""
        request = json.loads(read_body(environ) or b"{}")
        with self.lock:
            self.unplayed.update(request.get("queues", []))
        return respond(start_response, 200, b"{}", {"Content-Type": "application/json"})

    def played_jobs(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """Records how the player ended jobs, so DescribeJobs and ListJobs report it."""
        request = json.loads(read_body(environ) or b"{}")
        with self.lock:
            for detail in request.get("jobs", []):
                record = find_any_job(detail.get("jobId", ""), request.get("region", "us-east-1"))
                if record is None:
                    continue
                record.batchline_played = detail
                record.status = detail.get("status", record.status)
                record.job_stopped_reason = detail.get("statusReason")
                # ListJobs reads moto's own fields: its times too.
                for field, name in (("job_started_at", "startedAt"), ("job_stopped_at", "stoppedAt")):
                    if isinstance(detail.get(name), int):
                        setattr(record, field, datetime.datetime.fromtimestamp(detail[name] / 1000))
                record.job_stopped = "stoppedAt" in detail
        return respond(start_response, 200, b"{}", {"Content-Type": "application/json"})

    def create_compute_environment(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        body = read_body(environ)
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            request = None
        if isinstance(request, dict) and not request.get("serviceRole"):
            role_arn = self.batch_service_linked_role(environ.get("HTTP_AUTHORIZATION", ""))
            if role_arn:
                request["serviceRole"] = role_arn
                body = json.dumps(request).encode()
        reply = self.forward(environ, body)
        return respond(start_response, reply.status_code, reply.body, dict(reply.headers))

    def default_network(self) -> dict[str, Any]:
        """The default VPC's id, subnet ids and default security group id, via EC2's Query API."""
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": DEFAULT_CREDENTIAL.format(service="ec2"),
        }

        def ec2(query: str) -> bytes:
            return call_app(self.app, "POST", "/", headers, f"Version=2016-11-15&{query}".encode()).body

        vpcs = ec2("Action=DescribeVpcs&Filter.1.Name=is-default&Filter.1.Value.1=true")
        vpc = re.search(rb"<vpcId>([^<]+)</vpcId>", vpcs).group(1).decode()
        subnets = ec2(f"Action=DescribeSubnets&Filter.1.Name=vpc-id&Filter.1.Value.1={vpc}")
        groups = ec2(
            f"Action=DescribeSecurityGroups&Filter.1.Name=vpc-id&Filter.1.Value.1={vpc}"
            "&Filter.2.Name=group-name&Filter.2.Value.1=default"
        )
        return {
            "vpc": vpc,
            "subnets": sorted({m.decode() for m in re.findall(rb"<subnetId>([^<]+)</subnetId>", subnets)}),
            "securityGroups": sorted({m.decode() for m in re.findall(rb"<groupId>([^<]+)</groupId>", groups)}),
        }

    def batch_service_linked_role(self, authorization: str) -> str | None:
        """The ARN of AWS Batch's service-linked role, created on first use as AWS does."""
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": credential_scope_service(authorization, "iam"),
        }
        with self.lock:
            created = call_app(
                self.app, "POST", "/", headers,
                b"Action=CreateServiceLinkedRole&Version=2010-05-08&AWSServiceName=batch.amazonaws.com",
            )
            found = re.search(rb"<Arn>([^<]+)</Arn>", created.body)
            if found:
                return found.group(1).decode()
            listed = call_app(
                self.app, "POST", "/", headers,
                b"Action=ListRoles&Version=2010-05-08&PathPrefix=/aws-service-role/batch.amazonaws.com/",
            )
            found = re.search(rb"<Arn>([^<]+)</Arn>", listed.body)
            return found.group(1).decode() if found else None


def respond(start_response: Callable, status: int, payload: bytes, headers: dict[str, str]) -> list[bytes]:
    skip = {"content-length", "transfer-encoding", "content-encoding"}
    response_headers = [(k, v) for k, v in headers.items() if k.lower() not in skip]
    response_headers.append(("Content-Length", str(len(payload))))
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}.get(status, "Status")
    start_response(f"{status} {reason}", response_headers)
    return [payload]


def exit_when_parent_dies(parent_pid: int, server: Any) -> None:
    """Stops the server once the process that started it is gone (however it ended)."""

    def watch() -> None:
        while True:
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                pass
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def exact_dimension_statistics() -> None:
    """Makes moto's GetMetricStatistics match only the exact dimension set, as AWS does."""
    from moto.cloudwatch.models import CloudWatchBackend

    original = CloudWatchBackend.get_metric_statistics

    def get_metric_statistics(self: Any, namespace: str, metric_name: str, start_time: Any, end_time: Any,
                              period: int, stats: list, dimensions: list, unit: Any = None) -> list:
        wanted = sorted((d["Name"], d["Value"]) for d in dimensions or [])
        answer = original(self, namespace, metric_name, start_time, end_time, period, stats, dimensions, unit)
        for statistics in answer:
            statistics.metric_data = [
                datum for datum in statistics.metric_data
                if sorted((d.name, d.value) for d in datum.dimensions) == wanted
            ]
        return [statistics for statistics in answer if statistics.metric_data]

    CloudWatchBackend.get_metric_statistics = get_metric_statistics


def unshared_job_environment() -> None:
    """Gives each Batch job its own environment in DescribeJobs, as AWS reports it.

    moto's job (``Job._get_container_property("environment")``) appends the job
    definition's variables and ``AWS_BATCH_JOB_ID`` to the submission's environment list
    in place, and every child of an array shares its parent's list: each description of
    any of them appended one more entry to all of them, so a child of a 10,000-child array
    came back with ten thousand variables and more (about 1 MB each). Each job now gets a
    fresh list: its submission's variables, then the definition's it does not set. Like
    AWS, it does not report ``AWS_BATCH_JOB_ID`` (Batch sets it in the container).
    """
    from moto.batch.models import Job

    original = Job._get_container_property

    def get_container_property(self: Any, name: str, default: Any) -> Any:
        if name != "environment":
            return original(self, name, default)
        own = [dict(e) for e in (self.container_overrides or {}).get("environment", [])]
        named = {e.get("name") for e in own}
        defined = (self.job_definition.container_properties or {}).get("environment", [])
        return own + [dict(e) for e in defined if e.get("name") not in named]

    Job._get_container_property = get_container_property


def transactions_back_up_their_items() -> None:
    """Makes a DynamoDB transaction back up only the items it names, not their tables.

    moto's ``transact_write_items`` deep-copies the table once per item before it starts,
    and on a cancelled transaction puts the copies back. Here the table is not copied (the
    copy returns the table itself, so moto's rollback changes nothing), and the wrapper
    saves each named item before the transaction and, if it fails, writes back the saved
    items and deletes the ones that did not exist.
    """
    import copy

    from moto.dynamodb import models
    from moto.dynamodb.models.table import Table

    class TablesNotCopied:
        def __getattr__(self, name: str) -> Any:
            return getattr(copy, name)

        @staticmethod
        def deepcopy(value: Any, memo: Any = None) -> Any:
            return value if isinstance(value, Table) else copy.deepcopy(value, memo)

    models.copy = TablesNotCopied()
    original = models.DynamoDBBackend.transact_write_items

    def named_items(backend: Any, transact_items: list) -> list:
        saved = []
        for entry in transact_items:
            for kind, op in entry.items():
                table = backend.tables.get(op.get("TableName"))
                if table is None:
                    continue
                if kind == "Put":
                    attrs = op.get("Item", {})
                    names = [table.hash_key_attr] + ([table.range_key_attr] if table.range_key_attr else [])
                    if not all(name in attrs for name in names):
                        continue
                    key = {name: attrs[name] for name in names}
                else:
                    key = op.get("Key", {})
                try:
                    current = backend.get_item(op["TableName"], key)
                except Exception:  # noqa: BLE001 (a malformed key: moto's own checks answer it)
                    continue
                saved.append((op["TableName"], key, current.to_json()["Attributes"] if current else None))
        return saved

    def transact_write_items(self: Any, transact_items: list) -> None:
        saved = named_items(self, transact_items)
        try:
            original(self, transact_items)
        except Exception:
            for table_name, key, attrs in reversed(saved):
                if attrs is None:
                    self.delete_item(table_name, key)
                else:
                    self.put_item(table_name, attrs)
            raise

    models.DynamoDBBackend.transact_write_items = transact_write_items

    # A parsed condition is only read when it is evaluated against an item, so one parse
    # serves every request that names the same expression, names and values (moto parses a
    # transaction's conditions twice per item: to validate the request, then to check it).
    from moto.dynamodb.comparisons import ConditionExpressionParser

    parse = ConditionExpressionParser.parse
    parsed: dict[str, tuple[Any, dict[str, Any]]] = {}
    parsed_lock = threading.Lock()

    def parse_once(self: Any) -> Any:
        key = json.dumps([self.condition_expression, self.expression_attribute_names,
                          self.expression_attribute_values], sort_keys=True, default=str)
        with parsed_lock:
            known = parsed.get(key)
        if known is not None:
            self.__dict__.update(copy.copy(known[1]))
            return known[0]
        result = parse(self)
        with parsed_lock:
            if len(parsed) >= 1000:
                parsed.clear()
            parsed[key] = (result, copy.copy(self.__dict__))
        return result

    ConditionExpressionParser.parse = parse_once


def transformed_event_time_as_text() -> None:
    """Writes the event's ``time`` as ISO 8601 text in an input transformer's ``<aws.events.event.json>``, as AWS does.

    moto keeps an event's time as epoch seconds and turns it into text only when it sends
    the event itself; an envelope built with an input transformer got the number. Events
    sent without a transformer are left to moto, which converts them itself.
    """
    from moto.core.utils import iso_8601_datetime_without_milliseconds, utcfromtimestamp
    from moto.events.utils import EventTemplateParser

    original = EventTemplateParser.parse

    def parse(input_template: str, input_paths_map: dict, event: dict) -> dict:
        if input_template and "time" in event and not isinstance(event["time"], str):
            event = dict(event, time=iso_8601_datetime_without_milliseconds(utcfromtimestamp(float(event["time"]))))
        return original(input_template=input_template, input_paths_map=input_paths_map, event=event)

    EventTemplateParser.parse = staticmethod(parse)


def input_paths_parsed_once() -> None:
    """Parses each JSONPath of an event's delivery once, not once per delivered event.

    moto's EventBridge builds what it delivers to a target through jsonpath_ng's ``parse``
    for every input path (its default ones included), and ``parse`` builds a whole parser
    each time it is called: seven tenths of the emulator's time went there while a bus
    carried a map's child events. The parsed paths are kept; what is delivered is unchanged.
    """
    import functools

    import jsonpath_ng.ext

    jsonpath_ng.ext.parse = functools.lru_cache(maxsize=1024)(jsonpath_ng.ext.parse)


def sends_without_counting_the_queue() -> None:
    """Sends to an SQS queue without walking its messages, as AWS does.

    moto's SendMessage (and SendMessageBatch, and EventBridge's delivery to a queue) reads
    ``queue.attributes`` only for ``ContentBasedDeduplication``, but that property counts
    the queue's messages three times over (visible, delayed, in flight), each message's
    state worked out through datetime arithmetic: a send to a queue of 40,000 waiting
    messages took tens of milliseconds, so a lane that fell behind slowed every event put
    on the bus. While a send is under way the property answers only what a send reads
    (the deduplication setting of a FIFO queue); everywhere else it is moto's. A receive
    read the same attributes once per message received, for the retention period alone: it
    reads that period itself. A message's
    ``visible`` and ``delayed`` also read the clock once, without datetime arithmetic.
    """
    import threading
    import time

    from moto.sqs.models import Message, Queue, SQSBackend

    sending = threading.local()
    counted = Queue.attributes.fget

    def attributes(self: Any) -> dict[str, Any]:
        if getattr(sending, "active", False):
            return {"ContentBasedDeduplication": getattr(self, "content_based_deduplication", None)} if self.fifo_queue else {}
        return counted(self)

    def without_counting(send: Callable) -> Callable:
        def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
            sending.active = True
            try:
                return send(self, *args, **kwargs)
            finally:
                sending.active = False

        return wrapped

    def retained(self: Any, queue_name: str, message: Any) -> bool:
        # moto reads the retention period through every attribute, counts included, once
        # per message received.
        period = int(self.get_queue(queue_name).message_retention_period)
        return period + message.sent_timestamp / 1000 > time.time()

    Queue.attributes = property(attributes)
    SQSBackend.is_message_valid_based_on_retention_period = retained
    SQSBackend.send_message = without_counting(SQSBackend.send_message)
    SQSBackend.send_message_batch = without_counting(SQSBackend.send_message_batch)
    Message.visible = property(lambda self: time.time() * 1000.0 > self.visible_at)
    Message.delayed = property(lambda self: time.time() * 1000.0 < self.delayed_until)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    parser.add_argument("--endpoint-file", help="also write the endpoint URL to this file")
    args = parser.parse_args()

    # Batch without Docker: submitted jobs are recorded (and finish at once) without running.
    default_user_config["batch"]["use_docker"] = False
    exact_dimension_statistics()
    transformed_event_time_as_text()
    unshared_job_environment()
    transactions_back_up_their_items()
    sends_without_counting_the_queue()
    input_paths_parsed_once()

    # IAM for the functions' principals (devtools/iam): after the faults, in front of the adapter.
    sys.path.append(str(Path(__file__).resolve().parent.parent / "iam"))
    from enforce import IamEnforcement

    app = Faults(IamEnforcement(Adapter(DomainDispatcherApplication(create_backend_app)), respond, read_body))
    server = make_server(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)
    endpoint = f"http://{args.host}:{server.server_address[1]}"
    local_functions.install(endpoint)
    if args.endpoint_file:
        with open(args.endpoint_file, "w", encoding="utf-8") as handle:
            handle.write(endpoint + "\n")
    print(endpoint, flush=True)
    if args.parent_pid:
        exit_when_parent_dies(args.parent_pid, server)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    # Quiet: werkzeug's per-request log lines would drown test output; errors still show.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server.serve_forever()


if __name__ == "__main__":
    main()
