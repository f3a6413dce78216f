"""The IAM requests an AWS API call makes: its action, the resources it is authorised on,
and the condition keys AWS supplies with it.

An SDK call is not always one IAM request: Batch's SubmitJob is authorised on the job
queue, the job definition and the job; RegisterJobDefinition also passes its roles
(`iam:PassRole`). Only the operations Batchline's functions (and the job role) make are
described; any other is evaluated on `*`, which the simulator refuses for an action with
resource types, so an unknown call cannot pass unnoticed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class IamRequest:
    action: str
    resource: str
    context: dict[str, Any] = field(default_factory=dict)


def _arn(service: str, region: str, account: str, rest: str) -> str:
    return f"arn:aws:{service}:{region}:{account}:{rest}"


def _leading_keys(*keys: Any) -> dict[str, Any]:
    values = sorted({key["pk"]["S"] for key in keys if isinstance(key, dict) and "S" in key.get("pk", {})})
    return {"dynamodb:LeadingKeys": values}


def _dynamodb(operation: str, params: dict[str, Any], region: str, account: str) -> list[IamRequest]:
    table = lambda name: _arn("dynamodb", region, account, f"table/{name}")  # noqa: E731
    action = f"dynamodb:{operation}"
    if operation in ("GetItem", "DeleteItem", "UpdateItem"):
        return [IamRequest(action, table(params["TableName"]), _leading_keys(params.get("Key", {})))]
    if operation == "PutItem":
        return [IamRequest(action, table(params["TableName"]), _leading_keys(params.get("Item", {})))]
    if operation == "Query":
        # The partition key is the one the key condition names (`pk = :v`).
        values = params.get("ExpressionAttributeValues", {})
        condition = params.get("KeyConditionExpression", "")
        keys = [value for name, value in values.items() if f"pk = {name}" in condition.replace("#pk", "pk")]
        return [IamRequest(action, table(params["TableName"]), {"dynamodb:LeadingKeys": sorted(k["S"] for k in keys)})]
    if operation == "TransactWriteItems":
        out = []
        for item in params.get("TransactItems", []):
            for kind, inner in item.items():
                sub = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem", "ConditionCheck": "ConditionCheckItem"}[kind]
                key = inner.get("Item") if kind == "Put" else inner.get("Key")
                out.append(IamRequest(f"dynamodb:{sub}", table(inner["TableName"]), _leading_keys(key or {})))
        return out
    if operation == "BatchWriteItem":
        out = []
        for name, writes in params.get("RequestItems", {}).items():
            for write in writes:
                if "PutRequest" in write:
                    out.append(IamRequest("dynamodb:PutItem", table(name), _leading_keys(write["PutRequest"]["Item"])))
                if "DeleteRequest" in write:
                    out.append(IamRequest("dynamodb:DeleteItem", table(name), _leading_keys(write["DeleteRequest"]["Key"])))
        return [IamRequest("dynamodb:BatchWriteItem", table(name), {}) for name in params.get("RequestItems", {})] + out
    if "TableName" in params:
        return [IamRequest(action, table(params["TableName"]))]
    return [IamRequest(action, "*")]


def _batch_name_arn(kind: str, value: str, region: str, account: str) -> str:
    return value if value.startswith("arn:") else _arn("batch", region, account, f"{kind}/{value}")


def _request_tags(tags: dict[str, str] | None) -> dict[str, Any]:
    if not tags:
        return {}
    context: dict[str, Any] = {f"aws:RequestTag/{key}": value for key, value in tags.items()}
    context["aws:TagKeys"] = sorted(tags)
    return context


def _batch(operation: str, params: dict[str, Any], region: str, account: str) -> list[IamRequest]:
    action = f"batch:{operation}"
    named = lambda kind, value: _batch_name_arn(kind, value, region, account)  # noqa: E731
    if operation == "SubmitJob":
        tags = _request_tags(params.get("tags"))
        return [
            IamRequest(action, named("job-queue", params["jobQueue"]), tags),
            IamRequest(action, named("job-definition", params["jobDefinition"]), tags),
            IamRequest(action, _arn("batch", region, account, "job/*"), tags),
        ]
    if operation in ("TerminateJob", "CancelJob"):
        return [IamRequest(action, _arn("batch", region, account, f"job/{params['jobId']}"))]
    if operation in ("CreateComputeEnvironment",):
        return [IamRequest(action, named("compute-environment", params["computeEnvironmentName"]),
                           _request_tags(params.get("tags")))]
    if operation in ("UpdateComputeEnvironment", "DeleteComputeEnvironment"):
        return [IamRequest(action, named("compute-environment", params["computeEnvironment"]))]
    if operation == "CreateJobQueue":
        environments = [named("compute-environment", o["computeEnvironment"]) for o in params.get("computeEnvironmentOrder", [])]
        queue = IamRequest(action, named("job-queue", params["jobQueueName"]), _request_tags(params.get("tags")))
        return [queue] + [IamRequest(action, arn) for arn in environments]
    if operation in ("UpdateJobQueue", "DeleteJobQueue"):
        return [IamRequest(action, named("job-queue", params["jobQueue"]))]
    if operation == "RegisterJobDefinition":
        out = [IamRequest(action, named("job-definition", params["jobDefinitionName"]), _request_tags(params.get("tags")))]
        container = params.get("containerProperties") or {}
        for role in (container.get("executionRoleArn"), container.get("jobRoleArn")):
            if role:
                out.append(IamRequest("iam:PassRole", role, {"iam:PassedToService": "ecs-tasks.amazonaws.com"}))
        return out
    if operation == "DeregisterJobDefinition":
        return [IamRequest(action, named("job-definition", params["jobDefinition"]))]
    if operation == "TagResource":
        return [IamRequest(action, params.get("resourceArn", "*"), _request_tags(params.get("tags")))]
    # Describe*, List*: no resource-level permissions.
    return [IamRequest(action, "*")]


def _iam(operation: str, params: dict[str, Any], region: str, account: str) -> list[IamRequest]:
    action = f"iam:{operation}"
    role = params.get("RoleName")
    if not role:
        return [IamRequest(action, "*")]
    # A role's ARN carries its path: CreateRole names it; for any other call the adapter
    # puts in the existing role's (enforce.add_role_path).
    path = params.get("Path", "/")
    resource = f"arn:aws:iam::{account}:role{path}{role}"
    context: dict[str, Any] = {}
    if "PermissionsBoundary" in params:
        context["iam:PermissionsBoundary"] = params["PermissionsBoundary"]
    if "PolicyArn" in params:
        context["iam:PolicyARN"] = params["PolicyArn"]
    return [IamRequest(action, resource, context)]


def _ecr(operation: str, params: dict[str, Any], region: str, account: str) -> list[IamRequest]:
    action = f"ecr:{operation}"
    name = params.get("repositoryName")
    if not name:
        return [IamRequest(action, "*")]
    repository = _arn("ecr", region, account, f"repository/{name}")
    if operation == "CreateRepository" and params.get("tags"):
        # ECR authorises tags given on creation on ecr:CreateRepository itself, with the
        # request's tags (its user guide, "Using Tag-Based Access Control").
        return [IamRequest(action, repository, _request_tags({tag["Key"]: tag["Value"] for tag in params["tags"]}))]
    return [IamRequest(action, repository)]


def _events(operation: str, params: dict[str, Any], region: str, account: str) -> list[IamRequest]:
    if operation == "PutEvents":
        buses = {entry.get("EventBusName") or "default" for entry in params.get("Entries", [])}
        return [
            IamRequest("events:PutEvents", bus if bus.startswith("arn:") else _arn("events", region, account, f"event-bus/{bus}"))
            for bus in sorted(buses)
        ]
    return [IamRequest(f"events:{operation}", "*")]


def _cloudwatch(operation: str, params: dict[str, Any], region: str, account: str) -> list[IamRequest]:
    # Only PutMetricData takes the namespace as a condition key.
    context = {"cloudwatch:namespace": params["Namespace"]} if operation == "PutMetricData" else {}
    return [IamRequest(f"cloudwatch:{operation}", "*", context)]


def _s3(operation: str, params: dict[str, Any], region: str, account: str) -> list[IamRequest]:
    bucket, key = params.get("Bucket"), params.get("Key")
    if bucket and key is not None:
        return [IamRequest(f"s3:{operation}", f"arn:aws:s3:::{bucket}/{key}")]
    if bucket:
        context = {"s3:prefix": params["Prefix"]} if "Prefix" in params else {}
        return [IamRequest(f"s3:{operation}", f"arn:aws:s3:::{bucket}", context)]
    return [IamRequest(f"s3:{operation}", "*")]


def _sqs(operation: str, params: dict[str, Any], region: str, account: str) -> list[IamRequest]:
    # The queue is named by its URL (…/<account>/<name>), or by name to GetQueueUrl.
    if operation == "GetQueueUrl":
        owner = params.get("QueueOwnerAWSAccountId") or account
        return [IamRequest("sqs:GetQueueUrl", _arn("sqs", region, owner, params.get("QueueName", "")))]
    url = params.get("QueueUrl", "")
    if url:
        owner, name = url.rstrip("/").split("/")[-2:]
        return [IamRequest(f"sqs:{operation}", _arn("sqs", region, owner, name))]
    return [IamRequest(f"sqs:{operation}", "*")]


SERVICES = {"dynamodb": _dynamodb, "batch": _batch, "iam": _iam, "ecr": _ecr, "events": _events,
            "cloudwatch": _cloudwatch, "s3": _s3, "sqs": _sqs}


def iam_requests(service: str, operation: str, params: dict[str, Any], region: str, account: str) -> list[IamRequest]:
    """The IAM requests of one API call (`service` as in IAM actions: `dynamodb`, `batch`...)."""
    describe = SERVICES.get(service)
    if describe is None:
        return [IamRequest(f"{service}:{operation}", "*")]
    return describe(operation, params, region, account)
