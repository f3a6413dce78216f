"""The stack's functions run as their native binaries: custom resources, Invoke, EventBridge targets (and SNS ones).

moto runs a Lambda function only in Docker. Here a function whose binary is registered runs
under a local Lambda Runtime API instead, for the three ways the stack's functions are
called: CloudFormation's custom resource requests, the Invoke API, and EventBridge rules
with a Lambda target (moto raised NotImplementedError for those, failing the PutEvents;
now a registered function is invoked asynchronously, as EventBridge does, and an
unregistered one is skipped with a log line). A rule's SNS targets, to which moto delivered
nothing, are published to here too (the stack's blocked-queue alerts). Both are given what
the target's InputTransformer makes of the event, as EventBridge gives them.

moto's CloudFormation (5.2.5) handles a ``Custom::`` resource on Create only: it invokes the
function through Docker on a thread, with a ResponseURL on ``host.docker.internal``,
resolves ``!GetAtt`` on the resource before the answer arrives (to nothing), ignores a
FAILED answer (the stack stays CREATE_IN_PROGRESS) and sends no Update or Delete. This
module replaces that, so that a stack's custom resource (Batchline's ``Environment``, run
by the bootstrap function) is exercised as ``sam deploy`` exercises it:

* **Invoke**: the function behind the ServiceToken runs as its real native binary under a
  local Lambda Runtime API (``lambda_runtime.py``), with the function's own environment
  variables as the stack resolved them, the emulator as its endpoint and its timeout. Which
  binary runs a function is registered with ``POST /_batchline/lambda/runtimes``
  ``{"functions": {"BootstrapFunction": "/path/to/binary"}, "log": "/path/to/log"}``, keyed
  by the function's logical id in the stack (or its name). The Invoke API
  (``POST /2015-03-31/functions/NAME/invocations``) of a registered function runs the
  same way, so a test can call the stack's functions as Lambda would.
* **Answer**: the ResponseURL is ``{endpoint}/_batchline/cloudformation/answers/TOKEN``, a
  PUT the adapter takes; the stack waits for it (up to the resource's ``ServiceTimeout``,
  else the function's timeout) before going on, so ``!GetAtt`` resolves to the answer's
  ``Data``. Properties are sent as strings, as CloudFormation sends them.
* **FAILED on Create** rolls the stack back: the resource is CREATE_FAILED with
  CloudFormation's reason text, then every resource created so far is deleted in reverse
  order of creation — the failed custom resource first, sent a Delete with the physical id
  its answer gave — and the stack ends ROLLBACK_COMPLETE (ROLLBACK_FAILED if a Delete
  failed).
* **Update** (UpdateStack) sends a changed custom resource an Update with its old and new
  properties, then updates the resources that refer to it (a rule whose pattern holds its
  ``Data``). An answer with a new physical id is a replacement: once every resource is
  updated (UPDATE_COMPLETE_CLEANUP_IN_PROGRESS) the old id is sent a Delete. A FAILED
  Update rolls back (UPDATE_ROLLBACK_IN_PROGRESS): every custom resource the update
  changed, the failed one included, is sent an Update back to its old properties, and the
  stack keeps its old template (UPDATE_ROLLBACK_COMPLETE); resources the update added are
  deleted, and resources it removes are deleted only in the cleanup, once it stands. moto
  cannot undo changes to other resource types, so a failed update that also changed those
  leaves them changed.
* Any other failure (a resource moto cannot create, a function with no binary) rolls back
  or fails the stack as well, with the error as its reason: no stack is left IN_PROGRESS.
* **Delete** (DeleteStack, and rollbacks) deletes resources in reverse order of creation
  (moto's order was arbitrary, retried until it stuck), so a custom resource is deleted
  while its function still exists; a custom resource is sent a Delete, and a FAILED one
  leaves the stack DELETE_FAILED.

Every custom resource request is an event of the stack (``DescribeStackEvents``), with
the status and reason CloudFormation would give.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

from moto.cloudformation import cloudformation_backends
from moto.cloudformation import models as cfn_models
from moto.cloudformation import parsing
from moto.cloudformation.custom_model import CustomModel
from moto.events import models as events_models
from moto.events.utils import EventTemplateParser
from moto.utilities.arns import parse_arn

import lambda_runtime

# Registered with POST /_batchline/lambda/runtimes: logical id (or function name) → binary.
RUNTIMES: dict[str, Path] = {}
RUNTIME_LOG: list[Path] = []
# ResponseURL token → the answer PUT there (absent until it arrives).
ANSWERS: dict[str, dict[str, Any]] = {}
ANSWERED = threading.Condition()
ENDPOINT: list[str] = []


class CustomResourceFailed(Exception):
    """A custom resource answered FAILED (or never answered)."""

    def __init__(self, resource: CustomModel, request_type: str, reason: str):
        super().__init__(reason)
        self.resource = resource
        self.request_type = request_type
        self.reason = reason
        # The properties a failed Update asked for (what its rollback sends as the old ones).
        self.new_properties: dict[str, Any] = {}


def register_runtimes(document: dict[str, Any]) -> None:
    for key, binary in document.get("functions", {}).items():
        RUNTIMES[key] = Path(binary)
    if document.get("log"):
        RUNTIME_LOG[:] = [Path(document["log"])]


def take_answer(token: str, body: bytes) -> bool:
    """Keeps the answer PUT to a ResponseURL; false for a token nobody waits on."""
    with ANSWERED:
        if token not in ANSWERS or ANSWERS[token]:
            return False
        try:
            ANSWERS[token] = json.loads(body)
        except ValueError:
            ANSWERS[token] = {"Status": "FAILED", "Reason": f"the answer was not JSON: {body[:200]!r}"}
        ANSWERED.notify_all()
        return True


def runtime_for(function: Any, account_id: str, region_name: str, stack: Any = None) -> Path | None:
    """The binary registered for a function: by its logical id in a stack (``stack`` first:
    one being deleted is in no list), else by its name."""
    stacks = list(cloudformation_backends[account_id][region_name].stacks.values())
    for stack in ([stack] if stack else []) + stacks:
        # A snapshot: another thread may be creating this stack's resources meanwhile.
        for logical_id, resource in list(stack.resource_map._parsed_resources.items()):
            if getattr(resource, "function_name", None) == function.function_name and logical_id in RUNTIMES:
                return RUNTIMES[logical_id]
    return RUNTIMES.get(function.function_name)


def invoke_function(function: Any, account_id: str, region_name: str, payload: bytes,
                    stack: Any = None) -> lambda_runtime.Outcome:
    """Runs one invocation of a moto Lambda function as its registered binary."""
    binary = runtime_for(function, account_id, region_name, stack)
    if binary is None:
        return lambda_runtime.Outcome({"errorType": "ResourceNotReady",
                                       "errorMessage": f"no binary is registered for {function.function_name} "
                                                       "(POST /_batchline/lambda/runtimes)"}, error=True)
    environment = {
        **{k: str(v) for k, v in (function.environment_vars or {}).items()},
        "AWS_ENDPOINT_URL": ENDPOINT[0],
        "AWS_REGION": region_name,
        "AWS_DEFAULT_REGION": region_name,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    return lambda_runtime.invoke(
        binary,
        function_name=function.function_name,
        function_arn=function.function_arn,
        payload=payload,
        environment=environment,
        timeout=float(function.timeout),
        memory_mb=int(function.memory_size),
        log=RUNTIME_LOG[0] if RUNTIME_LOG else None,
    )


def as_strings(value: Any) -> Any:
    """Properties as CloudFormation sends them to a custom resource: scalars as strings."""
    if isinstance(value, dict):
        return {k: as_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_strings(v) for v in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def send(resource: CustomModel, request_type: str, properties: dict[str, Any],
         old_properties: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sends the custom resource one request and waits for the answer at its ResponseURL."""
    from moto.awslambda.utils import get_backend as get_lambda_backend

    token = uuid.uuid4().hex
    request = {
        "RequestType": request_type,
        "ServiceToken": properties["ServiceToken"],
        "ResponseURL": f"{ENDPOINT[0]}/_batchline/cloudformation/answers/{token}",
        "StackId": resource.stack_id,
        "RequestId": str(uuid.uuid4()),
        "LogicalResourceId": resource.logical_id,
        "ResourceType": resource.resource_type,
        "ResourceProperties": properties,
    }
    if request_type != "Create":
        request["PhysicalResourceId"] = resource.physical_resource_id
    if old_properties is not None:
        request["OldResourceProperties"] = old_properties
    account_id = resource.stack_id.split(":")[4]
    function = get_lambda_backend(account_id, resource.region_name).get_function(properties["ServiceToken"])
    wait = float(properties.get("ServiceTimeout") or function.timeout)
    with ANSWERED:
        ANSWERS[token] = {}
    try:
        # CloudFormation invokes asynchronously and waits for the ResponseURL; the answer
        # may arrive before the function returns, which is when the wait begins here.
        outcome = invoke_function(function, account_id, resource.region_name, json.dumps(request).encode(),
                                  resource.stack)
        with ANSWERED:
            ANSWERED.wait_for(lambda: bool(ANSWERS[token]), timeout=0 if outcome.error else wait)
            answer = ANSWERS[token]
    finally:
        with ANSWERED:
            ANSWERS.pop(token, None)
    if not answer:
        # AWS would retry the invoke twice and then wait out ServiceTimeout: the same end, later.
        said = outcome.payload.get("errorMessage") if isinstance(outcome.payload, dict) else outcome.payload
        return {"Status": "FAILED", "Reason": f"the function ended without answering the ResponseURL ({said})"}
    return answer


def _failure_reason(answer: dict[str, Any]) -> str:
    return f"Received response status [FAILED] from custom resource. Message returned: {answer.get('Reason', '')}"


def _event(resource: CustomModel, status: str, reason: str | None = None) -> None:
    stack = resource.stack
    stack.events.append(cfn_models.Event(
        stack_id=stack.stack_id, stack_name=stack.name, logical_resource_id=resource.logical_id,
        physical_resource_id=resource.physical_resource_id, resource_type=resource.resource_type,
        resource_status=status, resource_status_reason=reason, resource_properties=None,
    ))


def _model(stack: Any, logical_id: str, resource_type: str, physical_id: str,
           properties: dict[str, Any]) -> CustomModel:
    """A custom resource of ``stack`` (held, not looked up: a stack being deleted is in no list)."""
    model = CustomModel(stack.region_name, str(uuid.uuid4()), logical_id, physical_id)
    model.stack = stack
    model.stack_id = stack.stack_id
    model.resource_type = resource_type
    model.properties = properties
    return model


def create_custom_resource(cls: Any, resource_name: str, cloudformation_json: dict[str, Any], account_id: str,
                           region_name: str, **kwargs: Any) -> CustomModel:
    properties = as_strings(cloudformation_json["Properties"])
    stack = cloudformation_backends[account_id][region_name].get_stack(kwargs["StackId"])
    resource = _model(stack, kwargs["LogicalId"], kwargs["ResourceType"], "", properties)
    _event(resource, "CREATE_IN_PROGRESS")
    answer = send(resource, "Create", properties)
    resource.resource_name = answer.get("PhysicalResourceId") or resource.logical_id
    if answer.get("Status") != "SUCCESS":
        failure = CustomResourceFailed(resource, "Create", _failure_reason(answer))
        _event(resource, "CREATE_FAILED", failure.reason)
        raise failure
    resource.set_data(answer.get("Data") or {})
    stack.add_custom_resource(resource)
    _event(resource, "CREATE_COMPLETE")
    return resource


def update_custom_resource(cls: Any, original_resource: CustomModel, new_resource_name: str,
                           cloudformation_json: dict[str, Any], account_id: str, region_name: str) -> CustomModel:
    properties = as_strings(cloudformation_json["Properties"])
    _event(original_resource, "UPDATE_IN_PROGRESS")
    answer = send(original_resource, "Update", properties, original_resource.properties)
    if answer.get("Status") != "SUCCESS":
        failure = CustomResourceFailed(original_resource, "Update", _failure_reason(answer))
        _event(original_resource, "UPDATE_FAILED", failure.reason)
        failure.new_properties = properties
        raise failure
    physical_id = answer.get("PhysicalResourceId") or original_resource.physical_resource_id
    updated = _model(original_resource.stack, original_resource.logical_id, original_resource.resource_type,
                     physical_id, properties)
    updated.set_data(answer.get("Data") or {})
    updated.replaced = original_resource if physical_id != original_resource.physical_resource_id else None
    updated.stack.add_custom_resource(updated)
    _event(updated, "UPDATE_COMPLETE")
    return updated


def delete_custom_resource(self: CustomModel, account_id: str, region_name: str) -> None:
    _event(self, "DELETE_IN_PROGRESS")
    answer = send(self, "Delete", self.properties)
    if answer.get("Status") != "SUCCESS":
        failure = CustomResourceFailed(self, "Delete", _failure_reason(answer))
        _event(self, "DELETE_FAILED", failure.reason)
        raise failure
    _event(self, "DELETE_COMPLETE")


def _references(node: Any) -> set[str]:
    """Logical ids a template fragment refers to (Ref, GetAtt, Sub)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value)
            elif key == "Fn::GetAtt":
                found.add(value[0] if isinstance(value, list) else str(value).split(".")[0])
            elif key == "Fn::Sub":
                text = value[0] if isinstance(value, list) else value
                found.update(part.split("}")[0].split(".")[0] for part in str(text).split("${")[1:])
            found |= _references(value)
    elif isinstance(node, list):
        for item in node:
            found |= _references(item)
    return found


def _delete_in_reverse_creation_order(self: Any) -> None:
    """ResourceMap.delete: resources last created are deleted first (see the module docs)."""
    created = [name for name in reversed(list(self._parsed_resources)) if name in self._resource_json_map]
    remaining = [name for name in created if self._resource_json_map[name].get("DeletionPolicy") != "Retain"]
    last_exception: Exception | None = None
    while remaining:
        left = len(remaining)
        for name in list(remaining):
            resource = self._parsed_resources.get(name)
            try:
                if resource is not None and not isinstance(resource, str):
                    self._delete_resource(resource, self._resource_json_map[name])
                self._parsed_resources.pop(name, None)
            except CustomResourceFailed:
                raise
            except Exception as error:  # a dependency still in place: try again in the next pass
                last_exception = error
            else:
                remaining.remove(name)
        if len(remaining) == left:
            raise last_exception  # type: ignore[misc]


def _update_resource_map(self: Any, template: dict[str, Any], parameters: dict[str, Any] | None,
                         progress: dict[str, list]) -> None:
    """ResourceMap.update, as CloudFormation orders it: resources added, then changed ones —
    custom resources first, then the resources that refer to them — and removed ones left
    for the cleanup. `progress` records what was done (`added`, `updated` custom resources as
    (before, after), `removed` as (resource, its json), `replaced` custom resources), for
    the cleanup or a rollback.
    """
    changes = self.build_resource_diff(template, parameters)
    new = template["Resources"]
    custom = [n for n in changes["Modify"] if new[n]["Type"].startswith("Custom::")]
    for name in custom:
        for other, resource in new.items():
            if other in self._resource_json_map and other not in changes["Modify"] and name in _references(resource):
                changes["Modify"].append(other)
    modify = custom + [n for n in changes["Modify"] if n not in custom]
    progress["removed"] = [(self._parsed_resources[n], self._resource_json_map[n])
                           for n in changes["Remove"] if n in self._parsed_resources]
    for name in changes["Remove"]:
        self._parsed_resources.pop(name, None)
    self._template = template
    if parameters:
        self.input_parameters = parameters
    self.load_mapping()
    self.load_parameters()
    self.load_conditions()
    self._resource_json_map = template["Resources"]
    for name in changes["Add"]:
        _ = self[name]
        progress["added"].append(name)
    for name in modify:
        original = self._parsed_resources.get(name)
        changed = parsing.parse_and_update_resource(name, self._resource_json_map[name], self,
                                                    account_id=self._account_id, region_name=self._region_name)
        self._parsed_resources[name] = changed
        if isinstance(changed, CustomModel):
            progress["updated"].append((original, changed))
            if getattr(changed, "replaced", None):
                progress["replaced"].append(changed.replaced)


def _create_resources(self: Any) -> None:
    """Stack.create_resources, rolled back when a resource fails (a custom one answering FAILED)."""
    self.status = "CREATE_IN_PROGRESS"
    try:
        self.resource_map.create(self.template_dict)
    except Exception as error:  # noqa: BLE001 — whatever fails, the stack rolls back, as on AWS
        failed = error.resource.logical_id if isinstance(error, CustomResourceFailed) else "a resource"
        self.status = "ROLLBACK_IN_PROGRESS"
        self._add_stack_event("ROLLBACK_IN_PROGRESS", resource_status_reason=(
            f"The following resource(s) failed to create: [{failed}] ({error}). Rollback requested by user."))
        try:
            if isinstance(error, CustomResourceFailed):
                # CloudFormation sends the failed resource a Delete with the id its answer gave.
                delete_custom_resource(error.resource, "", "")
            self.resource_map.delete()
        except Exception as undone:  # noqa: BLE001 — any failure to delete is ROLLBACK_FAILED
            self.status = "ROLLBACK_FAILED"
            self._add_stack_event("ROLLBACK_FAILED", resource_status_reason=str(undone))
            return
        # A rolled-back stack has no resources or outputs (moto would create them anew,
        # lazily, on the next DescribeStacks).
        self.resource_map._resource_json_map = {}
        self.output_map = parsing.OutputMap(self.resource_map, {"Outputs": {}}, self.stack_id)
        self.status = "ROLLBACK_COMPLETE"
        self._add_stack_event("ROLLBACK_COMPLETE")
        return
    self.description = self.template_dict.get("Description")
    self.mark_creation_complete()


def _roll_back_update(self: Any, error: Exception, saved: tuple, progress: dict[str, list]) -> None:
    """A failed update undone as CloudFormation undoes one: the resources it added deleted,
    the template and parameters as they were, and every custom resource it changed (the
    failed one included) sent an Update back to its old properties. Other resource types it
    changed stay changed (moto cannot undo them)."""
    resource_map = self.resource_map
    failed = error.resource.logical_id if isinstance(error, CustomResourceFailed) else "a resource"
    self.status = "UPDATE_ROLLBACK_IN_PROGRESS"
    self._add_stack_event("UPDATE_ROLLBACK_IN_PROGRESS", resource_status_reason=(
        f"The following resource(s) failed to update: [{failed}] ({error})."))
    back = list(progress["updated"])
    if isinstance(error, CustomResourceFailed) and error.request_type == "Update":
        back.append((error.resource, None))
    try:
        for name in reversed(progress["added"]):
            added = resource_map._parsed_resources.pop(name, None)
            if added is not None and not isinstance(added, str):
                resource_map._delete_resource(added, resource_map._resource_json_map[name])
        (self.template, self.template_dict, resource_map._template, resource_map._resource_json_map,
         resource_map.input_parameters, parsed) = saved
        resource_map._parsed_resources = parsed
        resource_map.load_mapping()
        resource_map.load_parameters()
        resource_map.load_conditions()
        for original, changed in reversed(back):
            current = changed or original
            new_properties = changed.properties if changed else error.new_properties
            _event(current, "UPDATE_IN_PROGRESS")
            answer = send(current, "Update", original.properties, new_properties)
            if answer.get("Status") != "SUCCESS":
                _event(current, "UPDATE_FAILED", _failure_reason(answer))
                raise CustomResourceFailed(current, "Update", _failure_reason(answer))
            original.set_data(answer.get("Data") or {})
            _event(original, "UPDATE_COMPLETE")
            if changed and changed.physical_resource_id != original.physical_resource_id:
                # The rollback's resource is the old one again: the replacement is cleaned up.
                delete_custom_resource(changed, "", "")
    except Exception as undone:  # noqa: BLE001 — any failure to undo is UPDATE_ROLLBACK_FAILED
        self.status = "UPDATE_ROLLBACK_FAILED"
        self._add_stack_event("UPDATE_ROLLBACK_FAILED", resource_status_reason=str(undone))
        return
    self.output_map = self._create_output_map()
    self.status = "UPDATE_ROLLBACK_COMPLETE"
    self._add_stack_event("UPDATE_ROLLBACK_COMPLETE")


def _update(self: Any, template: str, role_arn: str | None = None, parameters: dict[str, Any] | None = None,
            tags: dict[str, str] | None = None) -> None:
    """Stack.update: the cleanup of removed and replaced resources after it, the rollback of a failed one."""
    self.status = "UPDATE_IN_PROGRESS"
    self._add_stack_event("UPDATE_IN_PROGRESS", resource_status_reason="User Initiated")
    resource_map = self.resource_map
    saved = (self.template, self.template_dict, resource_map._template, resource_map._resource_json_map,
             copy.copy(resource_map.input_parameters), dict(resource_map._parsed_resources))
    progress: dict[str, list] = {"added": [], "updated": [], "removed": [], "replaced": []}
    self.template = template
    self._parse_template()
    try:
        _update_resource_map(resource_map, self.template_dict, parameters, progress)
    except Exception as error:  # noqa: BLE001 — whatever fails, the update rolls back, as on AWS
        _roll_back_update(self, error, saved, progress)
        return
    self.output_map = self._create_output_map()
    if progress["replaced"] or progress["removed"]:
        # Removed resources, and the old ones of replaced custom resources, go once the
        # update stands; a failure here is recorded (DELETE_FAILED) but the update stands.
        self.status = "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS"
        self._add_stack_event("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS")
        for old in progress["replaced"]:
            try:
                delete_custom_resource(old, "", "")
            except CustomResourceFailed:
                pass
        for resource, resource_json in progress["removed"]:
            try:
                resource_map._delete_resource(resource, resource_json)
            except Exception:  # noqa: BLE001 — as CloudFormation: the update stands
                pass
    self.status = "UPDATE_COMPLETE"
    self._add_stack_event("UPDATE_COMPLETE")
    self.role_arn = role_arn
    if parameters:
        self.parameters = parameters
    if tags is not None:
        self.tags = tags


def _delete(self: Any) -> None:
    """Stack.delete, ending DELETE_FAILED when a custom resource refuses its Delete."""
    self.status = "DELETE_IN_PROGRESS"
    self._add_stack_event("DELETE_IN_PROGRESS", resource_status_reason="User Initiated")
    try:
        self.resource_map.delete()
    except Exception as error:  # noqa: BLE001 — whatever fails, the stack is DELETE_FAILED, as on AWS
        failed = error.resource.logical_id if isinstance(error, CustomResourceFailed) else "a resource"
        self.status = "DELETE_FAILED"
        self._add_stack_event("DELETE_FAILED", resource_status_reason=(
            f"The following resource(s) failed to delete: [{failed}] ({error})."))
        return
    self._add_stack_event("DELETE_COMPLETE")
    self.status = "DELETE_COMPLETE"


def _send_to_targets(original: Any) -> Any:
    """Rule.send_to_targets, with Lambda and SNS targets delivered here (see the module docs)."""

    def send_to_targets(self: Any, original_event: dict[str, Any], transform_input: bool = True) -> None:
        ours = [t for t in self.targets if parse_arn(t["Arn"]).service in ("lambda", "sns")]
        if not ours:
            return original(self, original_event, transform_input)
        others = copy.copy(self)
        others.targets = [t for t in self.targets if t not in ours]
        original(others, original_event, transform_input)
        if not self.event_pattern.matches_event(original_event):
            return
        for target in ours:
            # What the target is given: the event, or what its InputTransformer makes of it.
            event: Any = original_event
            if transform_input and target.get("InputTransformer"):
                transformer = target["InputTransformer"]
                event = EventTemplateParser.parse(input_template=transformer.get("InputTemplate"),
                                                  input_paths_map=transformer.get("InputPathsMap", {}),
                                                  event=original_event)
            arn = parse_arn(target["Arn"])
            if arn.service == "sns":
                _publish(target["Arn"], event)
            else:
                _invoke_async(target["Arn"], event)

    return send_to_targets


def _publish(topic_arn: str, event: Any) -> None:
    """Publishes a rule's event to an SNS topic, as EventBridge does (a string as it is, else
    its JSON); moto's EventBridge delivered nothing to SNS targets."""
    from moto.sns.models import sns_backends

    arn = parse_arn(topic_arn)
    message = event if isinstance(event, str) else json.dumps(event, default=str)
    try:
        sns_backends[arn.account][arn.region].publish(message=message, arn=topic_arn)
    except Exception as err:  # noqa: BLE001  (EventBridge retries and dead-letters; here it is said)
        logging.getLogger(__name__).warning("publishing to %s failed: %s", topic_arn, err)


def _invoke_async(function_arn: str, event: Any) -> None:
    """Invokes a registered function with a rule's event, asynchronously as EventBridge does."""
    from moto.awslambda.utils import get_backend as get_lambda_backend

    arn = parse_arn(function_arn)
    function = get_lambda_backend(arn.account, arn.region).get_function(function_arn)
    if runtime_for(function, arn.account, arn.region) is None:
        logging.getLogger(__name__).warning("no binary registered for %s: event not delivered", function_arn)
        return
    payload = json.dumps(event, default=str).encode()
    threading.Thread(target=invoke_function, args=(function, arn.account, arn.region, payload), daemon=True).start()


def install(endpoint: str) -> None:
    """Patches moto's CloudFormation as the module docs say; ``endpoint`` is the emulator's own."""
    ENDPOINT[:] = [endpoint]
    CustomModel.create_from_cloudformation_json = classmethod(create_custom_resource)
    CustomModel.update_from_cloudformation_json = classmethod(update_custom_resource)
    CustomModel.delete = delete_custom_resource
    parsing.ResourceMap.delete = _delete_in_reverse_creation_order
    cfn_models.Stack.create_resources = _create_resources
    cfn_models.Stack.update = _update
    cfn_models.Stack.delete = _delete
    events_models.Rule.send_to_targets = _send_to_targets(events_models.Rule.send_to_targets)
