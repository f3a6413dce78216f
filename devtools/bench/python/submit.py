"""Python baseline of batchline-submit's S3 path, for the benchmark (bench/README.md).

The same work as the Rust function for an S3 "Object Created" event whose rule names a
job definition: the stack configuration read from the table (cached per container), the
key decoded, the matching rules found, and per rule the exactly-once submission: a
conditional PutItem claim, SubmitJob, UpdateItem recording the job id.
"""

import hashlib
import json
import os
import re
import time
import urllib.parse

import boto3
from botocore.exceptions import ClientError

TABLE = os.environ["BATCHLINE_TABLE"]
dynamodb = boto3.client("dynamodb")
batch = boto3.client("batch")
_config = {"at": 0.0, "value": None}


def config():
    if _config["value"] is None or time.time() - _config["at"] > 60:
        item = dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": "CONFIG"}, "sk": {"S": "CURRENT"}})["Item"]
        _config.update(value=json.loads(item["document"]["S"]), at=time.time())
    return _config["value"]


def digest(text, chars):
    return hashlib.sha256(text.encode()).hexdigest()[:chars]


def job_name(readable, key):
    suffix = digest(key, 12)
    clean = re.sub(r"-+", "-", re.sub(r"[^A-Za-z0-9_-]", "-", readable)).strip("-_")
    clean = clean[:128 - len(suffix) - 1].rstrip("-_")
    return f"{clean}-{suffix}" if clean else f"job-{suffix}"


def submit(request, now_ms):
    key = {"pk": {"S": f"IDEM#{digest(request['key'], 40)}"}, "sk": {"S": "CLAIM"}}
    fingerprint = digest(json.dumps(request, sort_keys=True), 32)
    try:
        dynamodb.put_item(
            TableName=TABLE,
            Item={**key, "state": {"S": "PENDING"}, "idempotency_key": {"S": request["key"]}, "job_name": {"S": request["name"]},
                  "queue": {"S": request["queue"]}, "fingerprint": {"S": fingerprint}, "claimed_at": {"N": str(now_ms)},
                  "expires_at": {"N": str(now_ms // 1000 + 7 * 86400)}},
            ConditionExpression="attribute_not_exists(pk)",
        )
    except ClientError as error:
        if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
            raise
        item = dynamodb.get_item(TableName=TABLE, Key=key, ConsistentRead=True).get("Item", {})
        if "job_id" in item:
            return item["job_id"]["S"], False
        raise RuntimeError("a submission of this object is under way; retry later")
    job = batch.submit_job(jobName=request["name"], jobQueue=request["queue"], jobDefinition=request["definition"],
                           parameters=request["parameters"], tags=request["tags"], propagateTags=True,
                           containerOverrides={"environment": [{"name": k, "value": v} for k, v in request["environment"].items()]})
    dynamodb.update_item(TableName=TABLE, Key=key, UpdateExpression="SET #state = :submitted, job_id = :job",
                         ExpressionAttributeNames={"#state": "state"},
                         ExpressionAttributeValues={":submitted": {"S": "SUBMITTED"}, ":job": {"S": job["jobId"]}})
    return job["jobId"], True


def handler(event, context):
    if event.get("detail-type") != "Object Created" or event.get("source") != "aws.s3":
        raise ValueError("submit (baseline) takes S3 Object Created events")
    detail = event["detail"]
    bucket, key = detail["bucket"]["name"], urllib.parse.unquote_plus(detail["object"]["key"])
    size = int(detail["object"].get("size") or 0)
    version = detail["object"].get("sequencer") or detail["object"].get("etag") or event["id"]
    stack = config()
    started = []
    for rule_key, rule in sorted(stack["triggers"]["s3"].items()):
        if (rule.get("bucket") and rule["bucket"] != bucket) or not key.startswith(rule["prefix"]) or not key.endswith(rule["suffix"]):
            continue
        definition_key = rule["target"]["jobDefinition"]
        definition = stack["jobDefinitions"][definition_key]
        idempotency = f"s3:{rule_key}:{bucket}:{key}:{version}"
        parameters = dict(rule["parameters"], inputBucket=bucket, inputKey=key, inputSize=str(size))
        request = {
            "key": idempotency,
            "name": job_name(f"{stack['namePrefix']}-s3-{rule_key}-{key.rsplit('/', 1)[-1]}", idempotency),
            "queue": stack["jobQueues"][definition["queue"]]["arn"],
            "definition": definition["arn"],
            "parameters": parameters,
            "environment": {"INPUT_BUCKET": bucket, "INPUT_KEY": key, "INPUT_SIZE": str(size)},
            "tags": {"batchline:run": f"job-{digest(idempotency, 12)}", "batchline:pipeline": "", "batchline:stage": definition_key,
                     "batchline:trigger": "s3"},
        }
        job_id, new = submit(request, int(time.time() * 1000))
        started.append({"jobId": job_id, "jobName": request["name"], "new": new})
    return {"started": started}
