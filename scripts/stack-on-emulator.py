"""Packages the built stack with `sam package` and runs its whole life on the emulator's CloudFormation.

Run with the SAM virtual environment's Python (scripts/check-template does) after `sam build`
and a native `cargo build --bins`. moto's CloudFormation does not apply the SAM transform,
so it is applied here with AWS's own translator (samtranslator, with managed policies read
from the emulator's IAM), as CloudFormation does on AWS. The custom resource (`Environment`)
runs for real: the emulator (devtools/emulator/local_functions.py) invokes the bootstrap
function as its native binary, waits for its answer at the ResponseURL and honours FAILED.

The stack's life, each step checked and printed:
1. Create: CREATE_COMPLETE with bootstrap run inside it; the Batch event rules' patterns
   hold the queue ARNs of bootstrap's Data; the configuration is published; a job submitted
   through the submit function's HTTP API (invoked as the HTTP API would) reaches the queue
   the configuration names; its job state change event, put on the default bus, reaches the
   job-events queue through the template's rule.
2. Update, a changed job definition: UPDATE_COMPLETE, a new revision registered.
3. Update, a changed NamePrefix (the fixture gives the template a parameter for it; the
   real template ties it to the stack's name): a replacement: the old environment deleted
   in the cleanup, the rules updated to the new queues.
4. Update refused by bootstrap (an invalid size): UPDATE_ROLLBACK_COMPLETE, the environment
   as before.
5. Delete: DELETE_COMPLETE and nothing of the environment left.
6. A second stack whose configuration bootstrap refuses (two problems): the answer names
   both, the stack rolls back (ROLLBACK_COMPLETE) and leaves nothing; its Delete succeeds.

Uses AWS_ENDPOINT_URL when set; otherwise starts the emulator and stops it at the end.
Exits non-zero at the first step that does not hold.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
from samcli.yamlhelper import yaml_parse
from samtranslator.translator.managed_policy_translator import ManagedPolicyLoader
from samtranslator.translator.transform import transform as sam_transform

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
STACK = "batchline-ci"
# The functions the stack's life invokes, as native binaries (cargo build --bins).
BINARIES = {"BootstrapFunction": "batchline-bootstrap", "SubmitFunction": "batchline-submit"}
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]
# The rules whose patterns hold bootstrap's queue ARNs (set by fixture() from the template).
QUEUE_RULES: list[str] = []
def start_emulator() -> tuple[str, subprocess.Popen | None]:
    if os.environ.get("AWS_ENDPOINT_URL"):
        return os.environ["AWS_ENDPOINT_URL"], None
    log = open(ROOT / "target/stack-on-emulator.log", "w")
    server = subprocess.Popen(
        [str(ROOT / ".venv/bin/python"), str(ROOT / "devtools/emulator/server.py"), "--parent-pid", str(os.getpid())],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    endpoint = server.stdout.readline().strip()
    if not endpoint.startswith("http://"):
        raise SystemExit(f"the emulator did not start: {endpoint!r}")
    return endpoint, server


class Failed(Exception):
    """A step of the stack's life that did not hold."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise Failed(what)
    print(f"  ok: {what}")


class Life:
    """The stack's life on the emulator: the clients and the steps."""

    def __init__(self, endpoint: str, parameters: dict[str, str], declared: dict[str, Any]):
        session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                        region_name=REGION)
        client = lambda name: session.client(name, endpoint_url=endpoint)  # noqa: E731
        self.session = session
        self.cloudformation = client("cloudformation")
        self.batch = client("batch")
        self.iam = client("iam")
        self.events = client("events")
        self.sqs = client("sqs")
        self.sns = client("sns")
        self.dynamodb = client("dynamodb")
        self.lambdas = client("lambda")
        self.parameters = parameters
        # The Environment's properties in the template: the keys bootstrap names things by.
        self.declared = declared

    def wait(self, stack: str) -> str:
        deadline = time.time() + 300
        while True:
            status = self.cloudformation.describe_stacks(StackName=stack)["Stacks"][0]["StackStatus"]
            if not status.endswith("IN_PROGRESS") or time.time() > deadline:
                return status
            time.sleep(0.5)

    def events_of(self, stack: str, since: int) -> list[dict[str, Any]]:
        """The stack's events from the `since`-th on, oldest first, each printed."""
        events = self.cloudformation.describe_stack_events(StackName=stack)["StackEvents"]
        events = sorted(events, key=lambda e: e["Timestamp"])[since:]
        for e in events:
            reason = f": {e['ResourceStatusReason']}" if e.get("ResourceStatusReason") else ""
            print(f"    {e['ResourceStatus']:<36} {e['LogicalResourceId']}{reason}"[:400])
        return events

    def update(self, stack: str, parameters: list[dict[str, str]], template: dict[str, Any] | None = None
               ) -> tuple[str, list[dict[str, Any]]]:
        """UpdateStack (with `template`, else the previous one), waited for: the status the
        stack ends in, and the events the update added (each printed)."""
        seen = self.event_count(stack)
        body = {"TemplateBody": json.dumps(template)} if template else {"UsePreviousTemplate": True}
        self.cloudformation.update_stack(StackName=stack, Parameters=parameters, Capabilities=CAPABILITIES, **body)
        status = self.wait(stack)
        events = self.events_of(stack, seen)
        print(f"  stack {stack}: {status}")
        return status, events

    def event_count(self, stack: str) -> int:
        return len(self.cloudformation.describe_stack_events(StackName=stack)["StackEvents"])

    def resources(self, stack: str) -> dict[str, dict[str, Any]]:
        listed = self.cloudformation.describe_stack_resources(StackName=stack)["StackResources"]
        return {r["LogicalResourceId"]: r for r in listed if r.get("PhysicalResourceId")}

    def published(self, table: str) -> dict[str, Any] | None:
        item = self.dynamodb.get_item(TableName=table, Key={"pk": {"S": "CONFIG"}, "sk": {"S": "CURRENT"}}).get("Item")
        return json.loads(item["document"]["S"]) if item else None

    def queues(self, prefix: str) -> dict[str, str]:
        """The job queues bootstrap made for `prefix`, name → ARN (DELETED ones left out)."""
        names = {f"{prefix}-{key}" for key in self.declared["JobQueues"]}
        listed = self.batch.describe_job_queues()["jobQueues"]
        return {q["jobQueueName"]: q["jobQueueArn"] for q in listed
                if q["jobQueueName"] in names and q.get("status") != "DELETED"}

    def left_of(self, prefix: str) -> list[str]:
        """Whatever bootstrap made for `prefix` that still exists (the names it gives, by the
        template's keys: another prefix may begin with this one)."""
        named = lambda kind: {f"{prefix}-{key}" for key in self.declared[kind]}  # noqa: E731
        left = [f"queue {name}" for name in self.queues(prefix)]
        left += [f"compute environment {c['computeEnvironmentName']}"
                 for c in self.batch.describe_compute_environments()["computeEnvironments"]
                 if c["computeEnvironmentName"] in named("ComputeEnvironments") and c.get("status") != "DELETED"]
        left += [f"job definition {d['jobDefinitionName']}:{d['revision']}"
                 for d in self.batch.describe_job_definitions(status="ACTIVE")["jobDefinitions"]
                 if d["jobDefinitionName"] in named("JobDefinitions")]
        roles = {f"{prefix}-execution", f"{prefix}-job"}
        left += [f"role {r['RoleName']}" for r in self.iam.list_roles()["Roles"] if r["RoleName"] in roles]
        return left

    def rule_queues(self, stack: str) -> list[str]:
        """The queue ARNs the Batch event rules' patterns match: the same list in every rule
        whose pattern holds the Environment's `JobQueueArns` (else a mismatch is returned)."""
        resources = self.resources(stack)
        seen = []
        for logical in QUEUE_RULES:
            rule = resources[logical]["PhysicalResourceId"]
            pattern = json.loads(self.events.describe_rule(Name=rule)["EventPattern"])
            seen.append(sorted(pattern["detail"]["jobQueue"]))
        return seen[0] if all(s == seen[0] for s in seen) else [f"rules differ: {seen}"]

    def definition(self, name: str) -> tuple[int, str]:
        active = self.batch.describe_job_definitions(jobDefinitionName=name, status="ACTIVE")["jobDefinitions"]
        latest = max(active, key=lambda d: d["revision"])
        vcpu = next(r["value"] for r in latest["containerProperties"]["resourceRequirements"] if r["type"] == "VCPU")
        return latest["revision"], vcpu

    def submit_through_the_api(self, stack: str) -> dict[str, Any]:
        """POST /jobs, invoked on the stack's submit function as the HTTP API would."""
        event = json.loads((ROOT / "tests/fixtures/api/post-jobs.json").read_text())
        event["body"] = json.dumps({"jobDefinition": "default", "name": "from-the-created-stack"})
        function = self.resources(stack)["SubmitFunction"]["PhysicalResourceId"]
        reply = self.lambdas.invoke(FunctionName=function, Payload=json.dumps(event).encode())
        answer = json.loads(reply["Payload"].read())
        if reply.get("FunctionError") or answer.get("statusCode") not in (200, 201, 202):
            raise Failed(f"POST /jobs answered {answer}")
        return json.loads(answer["body"])


def fixture(template: dict[str, Any]) -> dict[str, Any]:
    """The packaged template with a NamePrefix parameter (the real one ties it to the stack's name)."""
    fixed = copy.deepcopy(template)
    QUEUE_RULES[:] = sorted(name for name, resource in template["Resources"].items()
                            if resource["Type"] == "AWS::Events::Rule"
                            and "Environment" in json.dumps(resource["Properties"].get("EventPattern", {})))
    fixed.setdefault("Parameters", {})["NamePrefix"] = {"Type": "String", "Default": STACK}
    fixed["Resources"]["Environment"]["Properties"]["NamePrefix"] = {"Ref": "NamePrefix"}
    return fixed


def with_environment(template: dict[str, Any], change: Any) -> dict[str, Any]:
    changed = copy.deepcopy(template)
    change(changed["Resources"]["Environment"]["Properties"])
    return changed


def check_blocked_queue_alert(life: Life, topic: str, job: dict[str, Any]) -> None:
    """Batch's "Job Queue Blocked" event for one of the stack's queues reaches the alert topic
    through the template's rule, as one line naming the queue, the job and Batch's reason.
    (The key policy that lets EventBridge publish to the encrypted topic is not evaluated
    offline: see the template's AlertKey.)"""
    inbox = life.sqs.create_queue(QueueName=f"{STACK}-alerts-inbox")["QueueUrl"]
    inbox_arn = life.sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    life.sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=inbox_arn, Attributes={"RawMessageDelivery": "true"})
    reason = "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - no compute environment of the queue can run the job"
    blocked = {"jobQueue": job["jobQueue"], "jobId": job["jobId"], "statusReason": reason}
    life.events.put_events(Entries=[{"Source": "aws.batch", "DetailType": "Batch Job Queue Blocked",
                                     "Detail": json.dumps(blocked)}])
    alerts = life.sqs.receive_message(QueueUrl=inbox, MaxNumberOfMessages=10, WaitTimeSeconds=5).get("Messages", [])
    life.sqs.delete_queue(QueueUrl=inbox)
    expected = f"Batch job queue {job['jobQueue']} is blocked by job {job['jobId']}: {reason}"
    check(any(m["Body"] == expected for m in alerts),
          f"a blocked-queue event reached the alert topic through the template's rule: {expected!r}")


def live(life: Life, template: dict[str, Any]) -> None:
    parameters = [{"ParameterKey": k, "ParameterValue": v} for k, v in life.parameters.items()]

    print(f"\n--- 1. create {STACK}")
    life.cloudformation.create_stack(StackName=STACK, TemplateBody=json.dumps(template), Parameters=parameters,
                                     Capabilities=CAPABILITIES)
    status = life.wait(STACK)
    events = life.events_of(STACK, 0)
    print(f"  stack {STACK}: {status}")
    check(status == "CREATE_COMPLETE", "the stack is CREATE_COMPLETE")
    resources = life.resources(STACK)
    print(f"  {len(resources)} of {len(template['Resources'])} resources created")
    missing: dict[str, int] = {}
    for name, resource in template["Resources"].items():
        if name not in resources:
            missing[resource["Type"]] = missing.get(resource["Type"], 0) + 1
    print("  not created (types moto's CloudFormation cannot create, or resources only they refer to): "
          + ", ".join(f"{n} {k}" for k, n in sorted(missing.items())))
    check(any(e["LogicalResourceId"] == "Environment" and e["ResourceStatus"] == "CREATE_COMPLETE" for e in events),
          "bootstrap answered the Environment's Create inside the stack")
    table = resources["Table"]["PhysicalResourceId"]
    config = life.published(table)
    check(config is not None and config["namePrefix"] == STACK, "bootstrap published the configuration")
    queue_arns = sorted(q["arn"] for q in config["jobQueues"].values())
    check(life.rule_queues(STACK) == queue_arns, f"the Batch event rules ({', '.join(QUEUE_RULES)}) match bootstrap's queues {queue_arns}")
    submitted = life.submit_through_the_api(STACK)
    job = life.batch.describe_jobs(jobs=[submitted["jobId"]])["jobs"][0]
    check(job["jobQueue"] == config["jobQueues"]["default"]["arn"],
          f"POST /jobs submitted {job['jobName']} to the queue the configuration names ({job['jobQueue']})")
    lane = resources["JobEventsQueue"]["PhysicalResourceId"]
    detail = {"jobId": job["jobId"], "jobName": job["jobName"], "jobQueue": job["jobQueue"], "status": "RUNNABLE"}
    life.events.put_events(Entries=[{"Source": "aws.batch", "DetailType": "Batch Job State Change",
                                     "Detail": json.dumps(detail)}])
    received = life.sqs.receive_message(QueueUrl=lane, MaxNumberOfMessages=10, WaitTimeSeconds=5).get("Messages", [])
    check(any(job["jobId"] in m["Body"] for m in received),
          "the job's state change event reached the job-events queue through the template's rule")
    check_blocked_queue_alert(life, resources["AlertTopic"]["PhysicalResourceId"], job)

    print("\n--- 2. update: a changed job definition")
    before = life.definition(f"{STACK}-default")
    template = with_environment(template, lambda p: p["JobDefinitions"]["default"].update(Vcpu="0.5", Memory="1024"))
    status, _ = life.update(STACK, parameters, template)
    check(status == "UPDATE_COMPLETE", "the stack is UPDATE_COMPLETE")
    after = life.definition(f"{STACK}-default")
    check(after == (before[0] + 1, "0.5"), f"job definition {STACK}-default: revision {before[0]} → {after[0]}, 0.5 vCPU")

    print("\n--- 3. update: a changed NamePrefix (a replacement)")
    renamed = f"{STACK}-b"
    old_id = life.resources(STACK)["Environment"]["PhysicalResourceId"]
    renamed_parameters = parameters + [{"ParameterKey": "NamePrefix", "ParameterValue": renamed}]
    status, events = life.update(STACK, renamed_parameters)
    check(status == "UPDATE_COMPLETE", "the stack is UPDATE_COMPLETE")
    new_id = life.resources(STACK)["Environment"]["PhysicalResourceId"]
    check(new_id != old_id, f"the Environment was replaced: {old_id} → {new_id}")
    statuses = [e["ResourceStatus"] for e in events]
    check("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS" in statuses
          and any(e["PhysicalResourceId"] == old_id and e["ResourceStatus"] == "DELETE_COMPLETE" for e in events),
          f"the cleanup sent the old {old_id} a Delete")
    check(life.left_of(STACK) == [], f"nothing of the old prefix {STACK} is left")
    queue_arns = sorted(life.queues(renamed).values())
    check(len(queue_arns) == 2 and life.rule_queues(STACK) == queue_arns,
          f"the Batch event rules ({', '.join(QUEUE_RULES)}) were updated to the new queues {queue_arns}")
    check(life.published(table)["namePrefix"] == renamed, "the published configuration names the new prefix")

    print("\n--- 4. update refused by bootstrap (an invalid Fargate size): rolled back")
    before = life.definition(f"{renamed}-default")
    refused = with_environment(template, lambda p: p["JobDefinitions"]["default"].update(Vcpu="1", Memory="1024"))
    status, events = life.update(STACK, renamed_parameters, refused)
    check(status == "UPDATE_ROLLBACK_COMPLETE", "the stack is UPDATE_ROLLBACK_COMPLETE")
    failed = [e for e in events if e["ResourceStatus"] == "UPDATE_FAILED"]
    check(bool(failed) and "not a valid Fargate size" in failed[0].get("ResourceStatusReason", ""),
          "the Environment is UPDATE_FAILED with bootstrap's reason")
    check(sum(e["LogicalResourceId"] == "Environment" and e["ResourceStatus"] == "UPDATE_COMPLETE" for e in events) == 1,
          "the rollback sent the Environment an Update back to its old properties")
    check(life.definition(f"{renamed}-default")[1] == before[1], f"job definition {renamed}-default is as before")
    check(life.resources(STACK)["Environment"]["PhysicalResourceId"] == new_id, "the Environment keeps its id")
    check(life.published(table)["namePrefix"] == renamed and life.rule_queues(STACK) == queue_arns,
          "the published configuration and the rules are as before the refused update")

    print(f"\n--- 5. delete {STACK}")
    stack_id = life.cloudformation.describe_stacks(StackName=STACK)["Stacks"][0]["StackId"]
    seen = life.event_count(STACK)
    life.cloudformation.delete_stack(StackName=STACK)
    status = life.wait(stack_id)
    life.events_of(stack_id, seen)
    print(f"  stack {STACK}: {status}")
    check(status == "DELETE_COMPLETE", "the stack is DELETE_COMPLETE")
    check(life.left_of(renamed) == [], f"nothing of {renamed} is left: {life.left_of(renamed)}")

    print("\n--- 6. a configuration bootstrap refuses: the stack rolls back")
    refused_stack = f"{STACK}-refused"
    refused = with_environment(template, lambda p: (
        p["JobDefinitions"]["default"].update(Vcpu="1", Memory="1024"),
        p["Pipelines"]["process"]["Stages"]["report"].update(JobDefinition="missing")))
    refused_parameters = parameters + [{"ParameterKey": "NamePrefix", "ParameterValue": refused_stack}]
    life.cloudformation.create_stack(StackName=refused_stack, TemplateBody=json.dumps(refused),
                                     Parameters=refused_parameters, Capabilities=CAPABILITIES)
    status = life.wait(refused_stack)
    events = life.events_of(refused_stack, 0)
    print(f"  stack {refused_stack}: {status}")
    check(status == "ROLLBACK_COMPLETE", "the stack is ROLLBACK_COMPLETE")
    reason = next((e.get("ResourceStatusReason", "") for e in events if e["ResourceStatus"] == "CREATE_FAILED"), "")
    print(f"  the answer's reason: {reason}")
    check("not a valid Fargate size" in reason and "Stages.report" in reason and "missing" in reason,
          "the Environment is CREATE_FAILED with every problem bootstrap found")
    check(any(e["LogicalResourceId"] == "Environment" and e["ResourceStatus"] == "DELETE_COMPLETE" for e in events),
          "the rollback sent the Environment a Delete, which succeeded")
    check(life.left_of(refused_stack) == [], f"nothing bootstrap makes for {refused_stack} is left")
    tables = [t for t in life.dynamodb.list_tables()["TableNames"] if t.startswith(refused_stack + "-")]
    functions = [f["FunctionName"] for f in life.lambdas.list_functions()["Functions"]
                 if f["FunctionName"].startswith(refused_stack + "-")]
    check(tables == [] and functions == [], f"the rollback deleted the stack's other resources too: {tables + functions}")
    refused_id = life.cloudformation.describe_stacks(StackName=refused_stack)["Stacks"][0]["StackId"]
    life.cloudformation.delete_stack(StackName=refused_stack)
    status = life.wait(refused_id)
    print(f"  stack {refused_stack}: {status}")
    check(status == "DELETE_COMPLETE", "the rolled-back stack's Delete is DELETE_COMPLETE")


def main() -> int:
    # samtranslator reads the region from a default boto3 session.
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    endpoint, server = start_emulator()
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_REGION=REGION, AWS_DEFAULT_REGION=REGION,
               AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", SAM_CLI_TELEMETRY="0")
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    s3 = session.client("s3", endpoint_url=endpoint)
    bucket = "batchline-sam-artifacts"
    s3.create_bucket(Bucket=bucket)

    packaged = ROOT / ".aws-sam/packaged.yaml"
    subprocess.run(
        [str(Path(sys.executable).parent / "sam"), "package", "--template-file", str(ROOT / ".aws-sam/build/template.yaml"),
         "--s3-bucket", bucket, "--output-template-file", str(packaged), "--region", REGION],
        check=True, env=env, cwd=ROOT,
    )
    uploaded = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    print(f"sam package uploaded {len(uploaded)} artifact(s) to s3://{bucket}")

    runtimes = {name: str(ROOT / "target/debug" / binary) for name, binary in BINARIES.items()}
    log = ROOT / "target/stack-on-emulator-functions.log"
    log.unlink(missing_ok=True)
    request = urllib.request.Request(f"{endpoint}/_batchline/lambda/runtimes", method="POST",
                                     data=json.dumps({"functions": runtimes, "log": str(log)}).encode())
    urllib.request.urlopen(request).read()
    print(f"the functions run as their native binaries (their log: {log.relative_to(ROOT)}): {runtimes}")

    network = json.load(urllib.request.urlopen(f"{endpoint}/_batchline/default-network"))
    parameters = {"SubnetIds": ",".join(network["subnets"][:2]), "SecurityGroupIds": network["securityGroups"][0]}
    pseudo = {"AWS::Region": REGION, "AWS::AccountId": "123456789012", "AWS::Partition": "aws", "AWS::StackName": STACK,
              "AWS::URLSuffix": "amazonaws.com"}
    template = sam_transform(yaml_parse(packaged.read_text()), {**pseudo, **parameters},
                             ManagedPolicyLoader(session.client("iam", endpoint_url=endpoint)))
    kinds: dict[str, int] = {}
    for resource in template["Resources"].values():
        kinds[resource["Type"]] = kinds.get(resource["Type"], 0) + 1
    print(f"after the SAM transform: {len(template['Resources'])} resources: "
          + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))

    outcome = 0
    try:
        declared = template["Resources"]["Environment"]["Properties"]
        live(Life(endpoint, parameters, declared), fixture(template))
        print("\nthe stack's whole life held on the emulator's CloudFormation")
    except Failed as failure:
        print(f"\nFAILED: {failure}", file=sys.stderr)
        outcome = 1
    finally:
        if server:
            server.terminate()
            server.wait()
    return outcome


if __name__ == "__main__":
    sys.exit(main())
