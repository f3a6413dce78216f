"""Packages the built stack with `sam package` and creates it on the emulator's CloudFormation.

Run with the SAM virtual environment's Python (scripts/check-template does) after
`sam build`. The emulator cannot run Lambda functions, so the Lambda-backed custom resource
(`Environment`) and whatever needs its outputs are left out. moto's CloudFormation does not
apply the SAM transform, so it is applied here with AWS's own translator (samtranslator,
with managed policies read from the emulator's IAM), as CloudFormation does on AWS. Every
resource's outcome is printed; resource types moto's CloudFormation cannot create are
listed with moto's own message. Exits non-zero unless the stack reaches CREATE_COMPLETE.

Uses AWS_ENDPOINT_URL when set; otherwise starts the emulator and stops it at the end.
"""

from __future__ import annotations

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


def references(node: Any) -> set[str]:
    """Logical ids a template fragment refers to (Ref, GetAtt, Sub)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value)
            elif key == "Fn::GetAtt":
                target = value[0] if isinstance(value, list) else str(value).split(".")[0]
                found.add(target)
            elif key == "Fn::Sub":
                text = value[0] if isinstance(value, list) else value
                for part in str(text).split("${")[1:]:
                    found.add(part.split("}")[0].split(".")[0])
            if key == "DependsOn":
                found.update([value] if isinstance(value, str) else value)
            found |= references(value)
    elif isinstance(node, list):
        for item in node:
            found |= references(item)
    return found


def without_custom_resources(template: dict) -> tuple[dict, list[str]]:
    """The template less Lambda-backed custom resources and everything that needs them."""
    resources = template["Resources"]
    removed = {name for name, r in resources.items() if r.get("Type", "").startswith("Custom::")}
    changed = True
    while changed:
        changed = False
        for name, resource in resources.items():
            if name not in removed and references(resource) & removed:
                removed.add(name)
                changed = True
    template["Resources"] = {k: v for k, v in resources.items() if k not in removed}
    template["Outputs"] = {k: v for k, v in template.get("Outputs", {}).items() if not references(v) & removed}
    return template, sorted(removed)


def main() -> int:
    # samtranslator reads the region from a default boto3 session.
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    endpoint, server = start_emulator()
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_REGION=REGION, AWS_DEFAULT_REGION=REGION,
               AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", SAM_CLI_TELEMETRY="0")
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    s3 = session.client("s3", endpoint_url=endpoint)
    cloudformation = session.client("cloudformation", endpoint_url=endpoint)
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

    template, removed = without_custom_resources(yaml_parse(packaged.read_text()))
    print(f"left out (need the Lambda-backed custom resource, which the emulator cannot run): {', '.join(removed)}")
    network = json.load(urllib.request.urlopen(f"{endpoint}/_batchline/default-network"))
    parameters = {"SubnetIds": ",".join(network["subnets"][:2]), "SecurityGroupIds": network["securityGroups"][0]}
    pseudo = {"AWS::Region": REGION, "AWS::AccountId": "123456789012", "AWS::Partition": "aws", "AWS::StackName": STACK,
              "AWS::URLSuffix": "amazonaws.com"}
    template = sam_transform(template, {**pseudo, **parameters}, ManagedPolicyLoader(session.client("iam", endpoint_url=endpoint)))
    kinds: dict[str, int] = {}
    for resource in template["Resources"].values():
        kinds[resource["Type"]] = kinds.get(resource["Type"], 0) + 1
    print(f"after the SAM transform: {len(template['Resources'])} resources: "
          + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    cloudformation.create_stack(
        StackName=STACK,
        TemplateBody=json.dumps(template),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    deadline = time.time() + 180
    status = "CREATE_IN_PROGRESS"
    while status.endswith("IN_PROGRESS") and time.time() < deadline:
        time.sleep(1)
        status = cloudformation.describe_stacks(StackName=STACK)["Stacks"][0]["StackStatus"]
    resources = cloudformation.describe_stack_resources(StackName=STACK)["StackResources"]
    failures = {
        e["LogicalResourceId"]: e.get("ResourceStatusReason", "")
        for e in cloudformation.describe_stack_events(StackName=STACK)["StackEvents"]
        if e["ResourceStatus"].endswith("FAILED")
    }
    print(f"\nstack {STACK}: {status}")
    created = {r["LogicalResourceId"]: r for r in resources if r.get("ResourceType") and r.get("PhysicalResourceId")}
    unsupported = {}
    for name, resource in sorted(template["Resources"].items(), key=lambda item: item[1]["Type"]):
        if name in created:
            print(f"  {created[name]['ResourceStatus']:<16} {resource['Type']:<40} {name}")
        elif name in failures:
            print(f"  FAILED           {resource['Type']:<40} {name}: {failures[name]}")
        else:
            unsupported.setdefault(resource["Type"], []).append(name)
    if server:
        server.terminate()
        server.wait()
        messages = (ROOT / "target/stack-on-emulator.log").read_text().splitlines()
    else:
        messages = []
    if unsupported:
        print("\nnot created: resource types moto's CloudFormation cannot create (its own message):")
        for kind, names in sorted(unsupported.items()):
            said = next((m for m in messages if m.strip().endswith(kind) and "No Moto CloudFormation support" in m), "(no message)")
            print(f"  {kind} ({len(names)}): {said.strip()}")
    print(f"\n{len(created)} of {len(template['Resources'])} resources created")
    return 0 if status == "CREATE_COMPLETE" else 1


if __name__ == "__main__":
    sys.exit(main())
