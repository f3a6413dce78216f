"""Python baseline of batchline-job-events' metrics path, for the benchmark (bench/README.md).

The same work as the Rust function for events of jobs outside pipelines: an SQS batch of
"Batch Job State Change" events in; per event a conditional PutItem claim (EVENT#<id>);
the metrics of all claimed events aggregated into Values/Counts datums and sent in as few
PutMetricData calls as the API allows; BatchWriteItem marking events done; partial batch
failures out. Written as a Python developer would, with boto3, without artificial slowdowns.
"""

import json
import math
import os
import time
from collections import defaultdict

import boto3
from botocore.exceptions import ClientError

TABLE = os.environ["BATCHLINE_TABLE"]
NAMESPACE = os.environ.get("BATCHLINE_METRIC_NAMESPACE") or "Batchline"
PRICES = {"X86_64": (0.04048, 0.004445), "ARM64": (0.03238, 0.00356)}
COUNTS = {"SUBMITTED": "JobsSubmitted", "PENDING": "JobsPending", "RUNNABLE": "JobsRunnable", "STARTING": "JobsStarting",
          "RUNNING": "JobsRunning", "SUCCEEDED": "JobsSucceeded", "FAILED": "JobsFailed"}

dynamodb = boto3.client("dynamodb")
cloudwatch = boto3.client("cloudwatch")


def size_of(detail):
    vcpu = memory = 0.0
    containers = [detail.get("container") or {}]
    for task in (detail.get("ecsProperties") or {}).get("taskProperties") or []:
        containers += task.get("containers") or []
    for container in containers:
        for requirement in container.get("resourceRequirements") or []:
            if requirement["type"] == "VCPU":
                vcpu += float(requirement["value"])
            elif requirement["type"] == "MEMORY":
                memory += float(requirement["value"])
    return (vcpu, memory) if vcpu and memory else None


def observations(detail):
    if (detail.get("arrayProperties") or {}).get("size") is not None and "index" not in detail.get("arrayProperties", {}):
        return []
    out = []
    if detail["status"] in COUNTS:
        out.append((COUNTS[detail["status"]], "Count", 1.0))
    if detail["status"] in ("SUCCEEDED", "FAILED"):
        created, started, stopped = detail.get("createdAt"), detail.get("startedAt"), detail.get("stoppedAt")
        for name, a, b in (("QueueWaitTime", created, started), ("RunTime", started, stopped), ("TotalTime", created, stopped)):
            if a is not None and b is not None and b >= a:
                out.append((name, "Milliseconds", float(b - a)))
        attempts = detail.get("attempts") or []
        out.append(("Attempts", "Count", float(len(attempts))))
        size = size_of(detail)
        if size:
            arch = ((detail.get("container") or {}).get("runtimePlatform") or {}).get("cpuArchitecture") or "X86_64"
            vcpu_price, gb_price = PRICES.get(arch.upper(), PRICES["X86_64"])
            runs = [(a["startedAt"], a["stoppedAt"]) for a in attempts if "startedAt" in a and "stoppedAt" in a]
            if not runs and started is not None and stopped is not None:
                runs = [(started, stopped)]
            seconds = sum(max(60.0, math.ceil(max(0, b - a) / 1000.0)) for a, b in runs)
            out.append(("EstimatedCost", "None", (size[0] * vcpu_price + size[1] / 1024.0 * gb_price) * seconds / 3600.0))
    return out


def dimension_sets(detail):
    sets = [()]
    queue = (detail.get("jobQueue") or "").rsplit("/", 1)[-1]
    definition = (detail.get("jobDefinition") or "").rsplit("/", 1)[-1].split(":")[0]
    tags = detail.get("tags") or {}
    if queue:
        sets.append((("JobQueue", queue),))
        if definition:
            sets.append((("JobQueue", queue), ("JobDefinition", definition)))
    if tags.get("batchline:pipeline"):
        sets.append((("Pipeline", tags["batchline:pipeline"]),))
        if tags.get("batchline:stage"):
            sets.append((("Pipeline", tags["batchline:pipeline"]), ("Stage", tags["batchline:stage"])))
    return sets


def event_minute(event, now_ms):
    try:
        ms = int(time.mktime(time.strptime(event["time"], "%Y-%m-%dT%H:%M:%SZ")) * 1000) - time.timezone * 1000
    except (KeyError, ValueError):
        ms = now_ms
    if ms < now_ms - 14 * 86400000 + 600000 or ms > now_ms + 7200000 - 600000:
        ms = now_ms
    return ms - ms % 60000


def claim(event_id, token, now_ms):
    try:
        dynamodb.put_item(
            TableName=TABLE,
            Item={"pk": {"S": f"EVENT#{event_id}"}, "sk": {"S": "EVENT"}, "state": {"S": "IN_PROGRESS"}, "token": {"S": token},
                  "claimed_at": {"N": str(now_ms)}, "expires_at": {"N": str(now_ms // 1000 + 15 * 86400)}},
            ConditionExpression="attribute_not_exists(pk) OR (#state = :in_progress AND claimed_at < :stale)",
            ExpressionAttributeNames={"#state": "state"},
            ExpressionAttributeValues={":in_progress": {"S": "IN_PROGRESS"}, ":stale": {"N": str(now_ms - 16 * 60000)}},
        )
        return "claimed"
    except ClientError as error:
        if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
            raise
        item = dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": f"EVENT#{event_id}"}, "sk": {"S": "EVENT"}}, ConsistentRead=True)
        return "done" if item.get("Item", {}).get("state", {}).get("S") == "DONE" else "in_flight"


def datums_of(aggregate):
    datums = []
    for (metric, dims, unit, minute), values in aggregate.items():
        items = sorted(values.items())
        for start in range(0, len(items), 150):
            chunk = items[start:start + 150]
            datums.append({"MetricName": metric, "Dimensions": [{"Name": n, "Value": v} for n, v in dims], "Unit": unit,
                           "Timestamp": minute / 1000.0, "Values": [v for v, _ in chunk], "Counts": [float(c) for _, c in chunk]})
    return datums


def handler(event, context):
    now_ms = int(time.time() * 1000)
    failed, by_event, events = [], defaultdict(list), []
    for record in event.get("Records", []):
        try:
            body = json.loads(record["body"])
            if body.get("detail-type") != "Batch Job State Change" or body.get("source") != "aws.batch":
                raise ValueError("not a Batch Job State Change")
            body["detail"]["jobId"], body["detail"]["status"]
        except (ValueError, KeyError, TypeError):
            failed.append(record.get("messageId"))
            continue
        if not by_event[body["id"]]:
            events.append(body)
        by_event[body["id"]].append(record["messageId"])

    claimed = []
    for body in events:
        try:
            state = claim(body["id"], context.aws_request_id, now_ms)
        except ClientError:
            state = "error"
        if state == "claimed":
            claimed.append(body)
        elif state != "done":
            failed.extend(by_event[body["id"]])

    aggregate = defaultdict(lambda: defaultdict(int))
    for body in claimed:
        minute = event_minute(body, now_ms)
        for dims in dimension_sets(body["detail"]):
            for metric, unit, value in observations(body["detail"]):
                aggregate[(metric, dims, unit, minute)][value] += 1
    datums = datums_of(aggregate)
    published = True
    for start in range(0, len(datums), 1000):
        try:
            cloudwatch.put_metric_data(Namespace=NAMESPACE, MetricData=datums[start:start + 1000])
        except ClientError:
            published = False
    if not published:
        for body in claimed:
            dynamodb.delete_item(TableName=TABLE, Key={"pk": {"S": f"EVENT#{body['id']}"}, "sk": {"S": "EVENT"}})
            failed.extend(by_event[body["id"]])
        claimed = []

    for start in range(0, len(claimed), 25):
        requests = [{"PutRequest": {"Item": {"pk": {"S": f"EVENT#{b['id']}"}, "sk": {"S": "EVENT"}, "state": {"S": "DONE"},
                                             "token": {"S": context.aws_request_id},
                                             "expires_at": {"N": str(now_ms // 1000 + 15 * 86400)}}}}
                    for b in claimed[start:start + 25]]
        dynamodb.batch_write_item(RequestItems={TABLE: requests})
    return {"batchItemFailures": [{"itemIdentifier": i} for i in failed]}
