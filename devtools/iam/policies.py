"""The IAM policies `template.yaml` gives each of Batchline's principals, for one stack.

The template is read as CloudFormation reads it (short-form tags included), translated by
the SAM translator offline (policy templates such as `DynamoDBCrudPolicy` and the event
sources' grants exist only after the transform), and its intrinsic functions (`Ref`,
`Fn::Sub`, `Fn::GetAtt`, `Fn::Join`, `Fn::If`, pseudo parameters) resolved for the stack
under test by cfn-lint's resolver, seeded with the stack's physical names. This is the one
template resolver of the project: the IAM evaluation reads policies through it, and
anything else that needs the template as deployed should too.

A stack is described by `Stack`: its name, account, region, parameter values and the
physical names (or attribute values) of the resources the policies name.
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

# The principals whose calls are evaluated, by the function's logical id in the template.
FUNCTIONS = {"submit": "SubmitFunction", "job-events": "JobEventsFunction", "bootstrap": "BootstrapFunction",
             "map": "MapFunction"}


@dataclass
class Stack:
    """One deployed stack: what the template's intrinsic functions resolve to."""

    name: str
    account: str = "123456789012"
    region: str = "us-east-1"
    parameters: dict[str, Any] = field(default_factory=dict)
    # `Ref <logical id>` and `Fn::GetAtt <logical id>.<attribute>` values, e.g.
    # {"Table": "my-table", "Table.Arn": "arn:aws:dynamodb:...:table/my-table"}.
    physical: dict[str, Any] = field(default_factory=dict)


class Unresolved(ValueError):
    """An intrinsic function the stack does not say the value of."""


def load_template(path: Path) -> dict[str, Any]:
    """The template as CloudFormation reads it: short-form tags become their long forms."""
    from cfnlint.decode import decode_str

    template, problems = decode_str(path.read_text())
    if problems:
        raise ValueError(f"{path}: {problems}")
    return json.loads(json.dumps(template, default=str))


def translate(template: dict[str, Any], stack: Stack) -> dict[str, Any]:
    """The SAM template as plain CloudFormation, offline (no AWS call is made)."""
    import boto3
    from samtranslator.parser import parser
    from samtranslator.translator.translator import Translator

    sam = copy.deepcopy(template)
    for resource in sam.get("Resources", {}).values():
        if resource.get("Type") == "AWS::Serverless::Function":
            # The translator wants an S3 location; what the code is does not matter here.
            resource["Properties"]["CodeUri"] = "s3://batchline-offline/code.zip"
    session = boto3.session.Session(region_name=stack.region)
    translator = Translator(None, parser.Parser(), boto_session=session)
    return translator.translate(
        sam_template=sam, parameter_values=dict(stack.parameters), get_managed_policy_map=lambda: {}
    )


def default_physical(cloudformation: dict[str, Any], stack: Stack) -> dict[str, Any]:
    """What CloudFormation would name each resource the stack does not say: `<stack>-<logical
    id>`, with its `Ref` and `Arn` (and `QueueName`, `Name`) in the form of its type."""
    region, account, partition = stack.region, stack.account, "aws"
    arn = lambda service, rest: f"arn:{partition}:{service}:{region}:{account}:{rest}"  # noqa: E731
    forms = {
        "AWS::SQS::Queue": lambda n: (f"https://sqs.{region}.amazonaws.com/{account}/{n}", arn("sqs", n)),
        "AWS::DynamoDB::Table": lambda n: (n, arn("dynamodb", f"table/{n}")),
        # CloudFormation names a bucket in lower case (S3 takes no other).
        "AWS::S3::Bucket": lambda n: (n.lower(), f"arn:{partition}:s3:::{n.lower()}"),
        "AWS::SNS::Topic": lambda n: (arn("sns", n), arn("sns", n)),
        "AWS::IAM::ManagedPolicy": lambda n: (f"arn:{partition}:iam::{account}:policy/{n}",) * 2,
        "AWS::IAM::Role": lambda n: (n, f"arn:{partition}:iam::{account}:role/{n}"),
        "AWS::Lambda::Function": lambda n: (n, arn("lambda", f"function:{n}")),
        "AWS::Events::Rule": lambda n: (n, arn("events", f"rule/{n}")),
        "AWS::Events::EventBus": lambda n: (n, arn("events", f"event-bus/{n}")),
        "AWS::Logs::LogGroup": lambda n: (n, arn("logs", f"log-group:{n}:*")),
    }
    values: dict[str, Any] = {}
    for logical, resource in cloudformation.get("Resources", {}).items():
        form = forms.get(resource.get("Type", ""))
        if form is None:
            continue
        name = f"{stack.name}-{logical}"
        values[logical], values[f"{logical}.Arn"] = form(name)
        values[f"{logical}.QueueName"] = values[f"{logical}.Name"] = name
    return values


class Resolver:
    """Resolves intrinsic functions in a translated template for one stack."""

    def __init__(self, cloudformation: dict[str, Any], stack: Stack):
        from cfnlint.context import create_context_for_template
        from cfnlint.jsonschema import CfnTemplateValidator, _resolvers_cfn
        from cfnlint.template import Template

        self.region, self.account = stack.region, stack.account
        values = {"AWS::AccountId": stack.account, "AWS::StackName": stack.name, **stack.parameters}
        values.update(default_physical(cloudformation, stack))
        values.update(stack.physical)
        template = Template("template.json", cloudformation, regions=[stack.region])
        context = create_context_for_template(template).evolve(ref_values=values)

        def get_att(validator: Any, instance: Any) -> Iterator[Any]:
            key = instance if isinstance(instance, str) else ".".join(instance)
            if key in values:
                yield values[key], validator, None

        def ref(validator: Any, instance: Any) -> Iterator[Any]:
            if instance in values:
                yield values[instance], validator, None
            else:
                yield from _resolvers_cfn.ref(validator, instance)

        resolvers = {"Fn::GetAtt": get_att, "Ref": ref}
        self._validator = CfnTemplateValidator({}).extend(fn_resolvers=resolvers)({}, context=context, cfn=template)
        self._conditions = cloudformation.get("Conditions", {})

    def resolve(self, value: Any) -> Any:
        if isinstance(value, dict) and len(value) == 1:
            (name,) = value
            if name == "Fn::If":
                # cfn-lint offers both branches; CloudFormation takes the one the condition picks.
                condition, when_true, when_false = value[name]
                return self.resolve(when_true if self.holds(condition) else when_false)
            if name == "Ref" or name.startswith("Fn::"):
                found = [resolved for resolved, _, error in self._validator.resolve_value(value) if not error]
                if not found:
                    raise Unresolved(f"the stack gives no value for {json.dumps(value)}")
                # A branch of Fn::If comes back as written: resolve what it holds too.
                return found[0] if found[0] == value else self.resolve(found[0])
        if isinstance(value, dict):
            return {key: self.resolve(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        return value


    def holds(self, condition: str) -> bool:
        """Whether the template's condition `condition` holds for the stack."""
        expression = self._conditions.get(condition)
        if expression is None:
            raise Unresolved(f"the template has no condition {condition!r}")
        return self._evaluate(expression)

    def _evaluate(self, expression: Any) -> bool:
        ((name, args),) = expression.items()
        if name == "Fn::Equals":
            left, right = (self.resolve(arg) for arg in args)
            return str(left) == str(right)
        if name == "Fn::Not":
            return not self._evaluate(args[0])
        if name == "Fn::And":
            return all(self._evaluate(arg) for arg in args)
        if name == "Fn::Or":
            return any(self._evaluate(arg) for arg in args)
        if name == "Condition":
            return self.holds(args)
        raise Unresolved(f"a condition function the resolver does not know: {name}")


def check_resolved(policy: Any, where: str) -> None:
    """An unresolved `${...}` in an ARN would be read as an IAM policy variable and never
    match; only IAM's own variables (`${aws:...}`) may remain."""
    text = json.dumps(policy)
    start = text.find("${")
    while start != -1:
        if not text.startswith("${aws:", start):
            raise Unresolved(f"{where}: {text[start:start + 60]} is left unresolved")
        start = text.find("${", start + 2)


def principal_policies(template_path: Path, stack: Stack) -> dict[str, dict[str, Any]]:
    """Per principal (function name), its identity policies as the template gives its
    execution role, resolved for `stack`: {"identity": [{"name", "policy"}]}; and
    "boundary": the `RoleBoundary` policy bootstrap's roles are created under. AWS managed
    policies (Lambda's logging and SQS polling, used by the Lambda service rather than the
    functions' code) are left out."""
    cloudformation = translate(load_template(template_path), stack)
    resolver = Resolver(cloudformation, stack)
    resources = cloudformation["Resources"]
    out: dict[str, dict[str, Any]] = {}
    for principal, function in FUNCTIONS.items():
        role = resources[f"{function}Role"]["Properties"]
        identity = []
        for inline in role.get("Policies", []):
            policy = resolver.resolve(inline["PolicyDocument"])
            check_resolved(policy, f"{function}Role/{inline['PolicyName']}")
            identity.append({"name": inline["PolicyName"], "policy": policy})
        out[principal] = {"identity": identity}
    if "RoleBoundary" in resources:
        boundary = resolver.resolve(resources["RoleBoundary"]["Properties"]["PolicyDocument"])
        check_resolved(boundary, "RoleBoundary")
        out["boundary"] = {"policy": boundary}
    out["resources"] = resource_policies(resources, resolver)
    return out


def resource_policies(resources: dict[str, Any], resolver: Resolver) -> dict[str, Any]:
    """The resource policies of the stack's queues (`AWS::SQS::QueuePolicy`) and event buses
    (`AWS::Events::EventBus` with a `Policy`), by the queue's or bus's ARN."""
    out: dict[str, Any] = {}
    for logical, resource in resources.items():
        if resource.get("Type") == "AWS::Events::EventBus" and "Policy" in resource.get("Properties", {}):
            policy = resolver.resolve(resource["Properties"]["Policy"])
            check_resolved(policy, logical)
            name = resolver.resolve(resource["Properties"]["Name"])
            out[f"arn:aws:events:{resolver.region}:{resolver.account}:event-bus/{name}"] = policy
            continue
        if resource.get("Type") != "AWS::SQS::QueuePolicy":
            continue
        policy = resolver.resolve(resource["Properties"]["PolicyDocument"])
        check_resolved(policy, logical)
        for queue in resource["Properties"].get("Queues", []):
            name = queue.get("Ref") if isinstance(queue, dict) else None
            if name:
                out[resolver.resolve({"Fn::GetAtt": [name, "Arn"]})] = policy
    return out


def with_parameter_defaults(cloudformation: dict[str, Any], stack: Stack) -> Stack:
    """`stack` with every parameter it does not give at the template's default, as
    CloudFormation takes them (a list parameter's default split at its commas)."""
    parameters = dict(stack.parameters)
    for name, declared in cloudformation.get("Parameters", {}).items():
        if name in parameters or "Default" not in declared:
            continue
        default = declared["Default"]
        parameters[name] = default.split(",") if declared.get("Type", "").startswith("List<") else default
    return Stack(name=stack.name, account=stack.account, region=stack.region, parameters=parameters,
                 physical=stack.physical)


def resource_properties(template_path: Path, logical_id: str, stack: Stack) -> dict[str, Any]:
    """The properties of the template's resource `logical_id` as CloudFormation would send
    them for `stack` (the custom resource's are what bootstrap receives), its parameters at
    their defaults unless the stack gives them."""
    cloudformation = translate(load_template(template_path), stack)
    stack = with_parameter_defaults(cloudformation, stack)
    resource = cloudformation["Resources"].get(logical_id)
    if resource is None:
        raise Unresolved(f"the template has no resource {logical_id}")
    return Resolver(cloudformation, stack).resolve(resource.get("Properties", {}))


def main() -> None:
    """`python policies.py TEMPLATE STACK.json`: prints the principals' policies as JSON;
    `python policies.py --properties LOGICAL_ID TEMPLATE STACK.json`: that resource's
    properties, resolved for the stack."""
    arguments = sys.argv[1:]
    logical_id = None
    if arguments[:1] == ["--properties"]:
        logical_id, arguments = arguments[1], arguments[2:]
    template, stack_file = Path(arguments[0]), Path(arguments[1])
    stack = Stack(**json.loads(stack_file.read_text()))
    if logical_id:
        json.dump(resource_properties(template, logical_id, stack), sys.stdout, indent=1)
    else:
        json.dump(principal_policies(template, stack), sys.stdout, indent=1)


if __name__ == "__main__":
    main()
