//! Checks on template.yaml: least privilege, a dead-letter queue and an alarm on every asynchronous path, JSON logs, environment variables.

use std::collections::BTreeSet;

use serde_yaml::Value;

const TEMPLATE: &str = include_str!("../../template.yaml");

fn template() -> Value {
    serde_yaml::from_str(TEMPLATE).expect("template.yaml parses")
}

/// A tagged value (`!Ref x`, `!GetAtt a.b`) as its tag and content.
fn tagged(value: &Value) -> Option<(String, &Value)> {
    match value {
        Value::Tagged(tagged) => Some((tagged.tag.to_string(), &tagged.value)),
        _ => None,
    }
}

/// The logical id a `!GetAtt X.Arn` / `!Ref X` / `Fn::GetAtt: [X, Arn]` points at.
fn target_of(value: &Value) -> Option<String> {
    if let Some((tag, inner)) = tagged(value) {
        return match (tag.as_str(), inner) {
            ("!GetAtt", Value::String(text)) => text.split('.').next().map(str::to_owned),
            ("!Ref", Value::String(text)) => Some(text.clone()),
            _ => None,
        };
    }
    value.get("Fn::GetAtt").and_then(|v| v.get(0)).and_then(Value::as_str).map(str::to_owned)
}

fn resources(template: &Value) -> Vec<(String, &Value)> {
    template["Resources"].as_mapping().unwrap().iter().map(|(k, v)| (k.as_str().unwrap().to_owned(), v)).collect()
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Sequence(items) => items.iter().flat_map(strings).collect(),
        _ => vec![],
    }
}

/// Actions whose IAM definition has no resource-level permissions, so `*` is the only
/// resource they take (each is also scoped by a condition or is read-only).
const NO_RESOURCE_LEVEL: [&str; 5] = [
    "cloudwatch:PutMetricData",
    "batch:ListJobs",
    "batch:DescribeJobs",
    "batch:DescribeComputeEnvironments",
    "batch:DescribeJobQueues",
];

#[test]
fn no_write_action_is_allowed_on_every_resource() {
    let template = template();
    let mut checked = 0;
    for (name, resource) in resources(&template) {
        let policies = resource["Properties"]["Policies"].as_sequence().cloned().unwrap_or_default();
        for policy in policies {
            for statement in policy["Statement"].as_sequence().cloned().unwrap_or_default() {
                checked += 1;
                if !strings(&statement["Resource"]).iter().any(|r| r == "*") {
                    continue;
                }
                for action in strings(&statement["Action"]) {
                    let verb = action.split(':').nth(1).unwrap_or_default();
                    let read = ["Describe", "List", "Get"].iter().any(|p| verb.starts_with(p));
                    let exempt =
                        NO_RESOURCE_LEVEL.contains(&action.as_str()) || action == "batch:DescribeJobDefinitions";
                    assert!(read || exempt, "{name}: {action} on Resource \"*\"");
                    if action == "cloudwatch:PutMetricData" {
                        assert!(
                            !statement["Condition"].is_null(),
                            "{name}: PutMetricData on * must be limited to the namespace"
                        );
                    }
                }
            }
        }
    }
    assert!(checked > 10, "the policies were read");
}

#[test]
fn pass_role_is_only_in_bootstrap_for_its_own_roles_and_ecs_tasks() {
    let template = template();
    for (name, resource) in resources(&template) {
        for policy in resource["Properties"]["Policies"].as_sequence().cloned().unwrap_or_default() {
            for statement in policy["Statement"].as_sequence().cloned().unwrap_or_default() {
                if strings(&statement["Action"]).iter().any(|a| a == "iam:PassRole") {
                    assert_eq!(name, "BootstrapFunction");
                    assert_eq!(
                        statement["Condition"]["StringEquals"]["iam:PassedToService"].as_str(),
                        Some("ecs-tasks.amazonaws.com")
                    );
                    let (_, resource) = tagged(&statement["Resource"]).expect("a !Sub'd role ARN");
                    assert!(
                        resource.as_str().unwrap().ends_with(":role/batchline/${AWS::StackName}/*"),
                        "{resource:?}"
                    );
                }
            }
        }
    }
}

/// Every statement of bootstrap's policies.
fn bootstrap_statements(template: &Value) -> Vec<Value> {
    let (_, bootstrap) = resources(template).into_iter().find(|(name, _)| name == "BootstrapFunction").unwrap();
    let policies = bootstrap["Properties"]["Policies"].as_sequence().cloned().unwrap_or_default();
    policies.iter().flat_map(|p| p["Statement"].as_sequence().cloned().unwrap_or_default()).collect()
}

/// The statements of bootstrap's policies that allow `action`.
fn allowing(statements: &[Value], action: &str) -> Vec<Value> {
    statements.iter().filter(|s| strings(&s["Action"]).iter().any(|a| a == action)).cloned().collect()
}

#[test]
fn bootstrap_can_give_its_roles_nothing_beyond_their_boundary_and_touches_only_its_repositories() {
    let template = template();
    let statements = bootstrap_statements(&template);
    // Whatever bootstrap writes on a role, the role carries the template's boundary.
    for action in ["iam:CreateRole", "iam:PutRolePolicy", "iam:PutRolePermissionsBoundary"] {
        for statement in allowing(&statements, action) {
            let boundary = &statement["Condition"]["StringEquals"]["iam:PermissionsBoundary"];
            assert_eq!(target_of(boundary).as_deref(), Some("RoleBoundary"), "{action}: {statement:?}");
        }
        assert!(!allowing(&statements, action).is_empty(), "{action} is allowed somewhere");
    }
    assert!(allowing(&statements, "iam:DeleteRolePermissionsBoundary").is_empty(), "the boundary cannot be removed");
    // Only the ECS task execution policy may be attached.
    for statement in allowing(&statements, "iam:AttachRolePolicy") {
        let (_, arn) = tagged(&statement["Condition"]["ArnEquals"]["iam:PolicyARN"]).expect("a !Sub'd policy ARN");
        assert!(arn.as_str().unwrap().ends_with(":policy/service-role/AmazonECSTaskExecutionRolePolicy"), "{arn:?}");
    }
    // The environment passes the boundary to bootstrap.
    let (_, environment) = resources(&template).into_iter().find(|(name, _)| name == "Environment").unwrap();
    assert_eq!(target_of(&environment["Properties"]["Roles"]["PermissionsBoundary"]).as_deref(), Some("RoleBoundary"));
    // Repositories: created only with this stack's tag, changed or deleted only when tagged so.
    for statement in allowing(&statements, "ecr:CreateRepository") {
        assert!(!statement["Condition"]["StringEquals"]["aws:RequestTag/batchline:stack"].is_null(), "{statement:?}");
    }
    for action in ["ecr:DeleteRepository", "ecr:PutImageScanningConfiguration"] {
        for statement in allowing(&statements, action) {
            let tag = &statement["Condition"]["StringEquals"]["aws:ResourceTag/batchline:stack"];
            assert!(!tag.is_null(), "{action}: {statement:?}");
        }
    }
    // Its table access is the configuration item's partition only.
    for statement in allowing(&statements, "dynamodb:DeleteItem") {
        let keys = &statement["Condition"]["ForAllValues:StringEquals"]["dynamodb:LeadingKeys"];
        assert_eq!(strings(keys), ["CONFIG"], "{statement:?}");
    }
}

#[test]
fn s3_bursts_cannot_take_the_concurrency_api_callers_need() {
    let template = template();
    let (_, submit) = resources(&template).into_iter().find(|(name, _)| name == "SubmitFunction").unwrap();
    let reserved = submit["Properties"]["ReservedConcurrentExecutions"].as_u64().unwrap();
    let events = submit["Properties"]["Events"].as_mapping().unwrap();
    let object_created = &events[&Value::from("ObjectCreated")];
    assert_eq!(object_created["Type"].as_str(), Some("SQS"), "S3 events are queued");
    let queued = object_created["Properties"]["ScalingConfig"]["MaximumConcurrency"].as_u64().unwrap();
    assert!(queued + 2 < reserved + 1, "S3 batches take {queued} of {reserved}: the API keeps at least two");
}

/// The rule whose target is `queue`, and the event source of job-events reading it.
fn lane<'t>(template: &'t Value, queue: &str) -> (&'t Value, &'t Value) {
    let rule = resources(template)
        .into_iter()
        .find(|(_, r)| {
            r["Type"] == "AWS::Events::Rule"
                && r["Properties"]["Targets"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .any(|t| target_of(&t["Arn"]).as_deref() == Some(queue))
        })
        .unwrap_or_else(|| panic!("no rule sends to {queue}"))
        .1;
    let events = template["Resources"]["JobEventsFunction"]["Properties"]["Events"].as_mapping().unwrap();
    let source = events
        .values()
        .find(|e| e["Type"] == "SQS" && target_of(&e["Properties"]["Queue"]).as_deref() == Some(queue))
        .unwrap_or_else(|| panic!("job-events does not read {queue}"));
    (&rule["Properties"]["EventPattern"], &source["Properties"])
}

#[test]
fn every_event_reaches_the_metrics_lane_and_pipeline_events_but_array_children_also_the_lane_without_a_batching_window()
{
    let template = template();
    let (batched, batched_source) = lane(&template, "JobEventsQueue");
    let (runs, runs_source) = lane(&template, "RunEventsQueue");
    // The metrics lane takes every event; the runs lane those with the tag every stage job
    // carries, except an array's children (a run follows an array by its parent's events).
    let run_tag = batchline::model::job_request::RUN_TAG;
    assert!(batched["detail"].get("tags").is_none(), "the metrics lane counts every event: {batched:?}");
    assert_eq!(runs["detail"]["tags"][run_tag], serde_yaml::from_str::<Value>("[{exists: true}]").unwrap());
    let no_child = serde_yaml::from_str::<Value>("{index: [{exists: false}]}").unwrap();
    assert_eq!(runs["detail"]["arrayProperties"], no_child);
    // Only the states a run or a single job acts on (which of them reach the lane, through
    // the emulator's rules: job_events.rs, `the_runs_lane_takes_only_the_states_...`).
    let states = serde_yaml::from_str::<Value>(
            "[{tags: {'batchline:pipeline': [{anything-but: ['']}]}, status: [RUNNING, SUCCEEDED, FAILED]}, {status: [FAILED]}]",
    )
    .unwrap();
    assert_eq!(runs["detail"]["$or"], states);
    let mut runs_otherwise = runs.clone();
    runs_otherwise["detail"].as_mapping_mut().unwrap().remove("tags");
    runs_otherwise["detail"].as_mapping_mut().unwrap().remove("arrayProperties");
    runs_otherwise["detail"].as_mapping_mut().unwrap().remove("$or");
    assert_eq!(batched, &runs_otherwise, "the same events otherwise");
    // Pipeline events are handled as they arrive; all events packed for PutMetricData.
    assert!(runs_source["MaximumBatchingWindowInSeconds"].as_u64().unwrap_or(0) == 0, "{runs_source:?}");
    assert!(runs_source["BatchSize"].as_u64().unwrap() <= 10);
    assert_eq!(batched_source["BatchSize"].as_u64(), Some(250));
    assert_eq!(batched_source["MaximumBatchingWindowInSeconds"].as_u64(), Some(10));
    // Each lane's envelope names it, so job-events does only that lane's work (the routing
    // and the work itself: tests/integration/job_events.rs, `the_template_lanes_...`).
    let lanes = batchline_testkit::lanes::template_lanes(&[]).unwrap();
    let envelopes: BTreeSet<_> =
        lanes.iter().map(|l| (l.queue.as_str(), l.input_template.clone().unwrap_or_default())).collect();
    assert_eq!(
        envelopes,
        BTreeSet::from([
            ("JobEventsQueue", r#"{"lane": "metrics", "event": <aws.events.event.json>}"#.to_owned()),
            ("RunEventsQueue", r#"{"lane": "runs", "event": <aws.events.event.json>}"#.to_owned()),
        ])
    );
}

#[test]
fn every_asynchronous_path_has_a_dead_letter_queue_with_an_alarm() {
    let template = template();
    let mut dead_letter_queues = BTreeSet::new();
    let mut paths = 0;
    for (name, resource) in resources(&template) {
        let kind = resource["Type"].as_str().unwrap();
        let properties = &resource["Properties"];
        match kind {
            "AWS::Serverless::Function" => {
                paths += 1;
                let dlq = target_of(&properties["DeadLetterQueue"]["TargetArn"])
                    .unwrap_or_else(|| panic!("{name}: no DeadLetterQueue"));
                dead_letter_queues.insert(dlq);
                for (event_name, event) in properties["Events"].as_mapping().cloned().unwrap_or_default() {
                    let event_kind = event["Type"].as_str().unwrap();
                    if ["EventBridgeRule", "Schedule"].contains(&event_kind) {
                        paths += 1;
                        let dlq = target_of(&event["Properties"]["DeadLetterConfig"]["Arn"])
                            .unwrap_or_else(|| panic!("{name}.{event_name:?}: no DeadLetterConfig"));
                        assert!(!event["Properties"]["RetryPolicy"].is_null(), "{name}.{event_name:?}: no RetryPolicy");
                        dead_letter_queues.insert(dlq);
                    }
                    if event_kind == "SQS" {
                        paths += 1;
                        let queue = target_of(&event["Properties"]["Queue"]).unwrap();
                        let queue_resource = &template["Resources"][queue.as_str()];
                        let dlq = target_of(&queue_resource["Properties"]["RedrivePolicy"]["deadLetterTargetArn"])
                            .unwrap_or_else(|| panic!("{queue}: no redrive policy"));
                        dead_letter_queues.insert(dlq);
                        let responses = strings(&event["Properties"]["FunctionResponseTypes"]);
                        assert_eq!(responses, ["ReportBatchItemFailures"], "{name}: partial batch responses");
                    }
                }
            }
            "AWS::Events::Rule" => {
                for target in properties["Targets"].as_sequence().unwrap() {
                    paths += 1;
                    let dlq = target_of(&target["DeadLetterConfig"]["Arn"])
                        .unwrap_or_else(|| panic!("{name}: target without DLQ"));
                    dead_letter_queues.insert(dlq);
                }
            }
            _ => {}
        }
    }
    assert!(paths >= 8, "{paths} asynchronous paths found");
    let alarmed: BTreeSet<String> = resources(&template)
        .iter()
        .filter(|(_, r)| r["Type"] == "AWS::CloudWatch::Alarm")
        .flat_map(|(_, r)| r["Properties"]["Dimensions"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|d| target_of(&d["Value"]))
        .collect();
    for dlq in &dead_letter_queues {
        assert!(alarmed.contains(dlq), "dead-letter queue {dlq} has no alarm");
    }
}

#[test]
fn every_function_logs_json_and_sets_exactly_the_variables_the_code_reads() {
    let template = template();
    let globals = &template["Globals"]["Function"];
    let functions: Vec<(String, &Value)> =
        resources(&template).into_iter().filter(|(_, r)| r["Type"] == "AWS::Serverless::Function").collect();
    assert_eq!(functions.len(), 4);
    for (name, function) in functions {
        let properties = &function["Properties"];
        let format =
            properties["LoggingConfig"]["LogFormat"].as_str().or(globals["LoggingConfig"]["LogFormat"].as_str());
        assert_eq!(format, Some("JSON"), "{name}");
        let mut variables: BTreeSet<String> = BTreeSet::new();
        for source in [&globals["Environment"]["Variables"], &properties["Environment"]["Variables"]] {
            if let Some(map) = source.as_mapping() {
                variables.extend(map.keys().filter_map(|k| k.as_str().map(str::to_owned)));
            }
        }
        let read: BTreeSet<String> = batchline::settings::ALL_VARS.iter().map(|v| v.to_string()).collect();
        assert_eq!(variables, read, "{name}: the template sets exactly what the code reads");
        let binary = function["Metadata"]["BuildProperties"]["Binary"].as_str().unwrap();
        assert!(binary.starts_with("batchline-"), "{name}: {binary}");
        assert_eq!(function["Metadata"]["BuildMethod"].as_str(), Some("rust-cargolambda"));
    }
    assert_eq!(globals["Architectures"][0].as_str(), Some("arm64"));
    assert_eq!(globals["Runtime"].as_str(), Some("provided.al2023"));
}

#[test]
fn every_function_traces_actively_and_the_saved_queries_read_the_functions_log_groups() {
    let template = template();
    // Lambda's own X-Ray segments for every function (no function overrides it)
    assert_eq!(template["Globals"]["Function"]["Tracing"].as_str(), Some("Active"));
    let functions: BTreeSet<String> = resources(&template)
        .into_iter()
        .filter(|(_, r)| r["Type"] == "AWS::Serverless::Function")
        .inspect(|(name, r)| assert!(r["Properties"].get("Tracing").is_none(), "{name}"))
        .map(|(name, _)| name)
        .collect();
    let queries: Vec<(String, &Value)> =
        resources(&template).into_iter().filter(|(_, r)| r["Type"] == "AWS::Logs::QueryDefinition").collect();
    let names: Vec<&str> = queries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["RunQuery", "FailedJobsQuery", "SlowestStagesQuery", "OutOfMemoryResizesQuery"]);
    for (name, query) in &queries {
        let properties = &query["Properties"];
        let (tag, title) = tagged(&properties["Name"]).expect("a !Sub name");
        assert!(tag == "!Sub" && title.as_str().unwrap().starts_with("batchline/${AWS::StackName}/"), "{name}");
        // Each reads only the functions' own log groups, named as Lambda names them
        for group in properties["LogGroupNames"].as_sequence().unwrap() {
            let (tag, text) = tagged(group).expect("a !Sub log group");
            let function =
                text.as_str().and_then(|t| t.strip_prefix("/aws/lambda/${")).and_then(|t| t.strip_suffix('}'));
            assert!(tag == "!Sub" && function.is_some_and(|f| functions.contains(f)), "{name}: {group:?}");
        }
        // (Each query's filter and fields are checked against real lines in observability.rs.)
        let text = properties["QueryString"].as_str().unwrap();
        assert!(text.contains("filter ") && text.len() <= 10_000, "{name}");
    }
}

#[test]
fn the_environment_properties_are_a_valid_stack_configuration() {
    // The custom resource's properties, resolved as CloudFormation would for a stack with the
    // template's parameter defaults (by the one template resolver, devtools/iam/policies.py),
    // pass the same validation bootstrap runs at deploy time.
    let stack = serde_json::json!({"name": "teststack",
                                   "parameters": {"SubnetIds": ["subnet-1", "subnet-2"], "SecurityGroupIds": ["sg-1"]}});
    let template_path = batchline_testkit::emulator::repo_root().join("template.yaml");
    let resolved = batchline_testkit::emulator::template_properties(&template_path, "Environment", &stack)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resolved["NamePrefix"], "teststack");
    assert_eq!(resolved["Network"]["Subnets"], "subnet-1,subnet-2");
    let config = batchline_bootstrap::declaration::declare(&resolved).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.pipelines.contains_key("process"));
    assert_eq!(config.triggers.schedules.keys().collect::<Vec<_>>(), ["teststack-schedule"]);
    assert_eq!(config.roles.input_bucket.as_deref(), Some("teststack-inputbucket"));
    assert_eq!(resolved["ServiceTimeout"].as_u64(), Some(1200), "well under an hour");
}

#[test]
fn the_role_boundary_lets_stages_write_run_data_only_under_its_folder_which_no_trigger_watches() {
    let template = template();
    let (_, boundary) = resources(&template).into_iter().find(|(name, _)| name == "RoleBoundary").unwrap();
    let statements = boundary["Properties"]["PolicyDocument"]["Statement"].as_sequence().cloned().unwrap();
    // Writes: PutObject only, only under the input bucket's run-data folder (Denies aside).
    let writes: Vec<&Value> = statements
        .iter()
        .filter(|s| s["Effect"] == "Allow")
        .filter(|s| {
            strings(&s["Action"])
                .iter()
                .any(|a| a.starts_with("s3:") && !a.starts_with("s3:Get") && !a.starts_with("s3:List"))
        })
        .collect();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(strings(&writes[0]["Action"]), ["s3:PutObject"]);
    let (_, resource) = tagged(&writes[0]["Resource"]).expect("a !Sub'd object ARN");
    assert_eq!(resource.as_str(), Some("arn:${AWS::Partition}:s3:::${InputBucket}/${RunDataPrefix}*"));
    // Listing the bucket is allowed by the boundary too (the job role's policy grants it).
    assert!(statements.iter().any(|s| strings(&s["Action"]) == ["s3:ListBucket"]), "ListBucket in the boundary");
    // The environment is given the same folder, and the default trigger prefix lies outside it.
    let (_, environment) = resources(&template).into_iter().find(|(name, _)| name == "Environment").unwrap();
    assert_eq!(target_of(&environment["Properties"]["Roles"]["RunDataPrefix"]).as_deref(), Some("RunDataPrefix"));
    let default = |name: &str| template["Parameters"][name]["Default"].as_str().unwrap().to_owned();
    let (folder, input) = (default("RunDataPrefix"), default("InputPrefix"));
    assert!(!folder.starts_with(&input) && !input.starts_with(&folder), "{input:?} and {folder:?} overlap");
}

#[test]
fn the_templates_api_routes_are_the_routers() {
    let template = template();
    let (_, submit) = resources(&template).into_iter().find(|(name, _)| name == "SubmitFunction").unwrap();
    let declared: BTreeSet<(String, String)> = submit["Properties"]["Events"]
        .as_mapping()
        .unwrap()
        .values()
        .filter(|event| event["Type"].as_str() == Some("HttpApi"))
        .map(|event| {
            let properties = &event["Properties"];
            (properties["Method"].as_str().unwrap().to_owned(), properties["Path"].as_str().unwrap().to_owned())
        })
        .collect();
    let routed: BTreeSet<(String, String)> =
        batchline_submit::api::ROUTES.iter().map(|r| (r.method.to_string(), r.path.to_string())).collect();
    assert_eq!(declared, routed);
    for (method, path) in &routed {
        let concrete = path.replace("{id}", "r-1").replace("{name}", "nightly");
        assert!(batchline_submit::api::route(method, &concrete).is_ok(), "{method} {path} is not routed");
    }
}

/// The routes the HTTP API reference documents: each `METHOD /path` in code in the first
/// column of its request table (several to a cell, any query string dropped). Panics on a
/// row that documents none, so a malformed route cannot slip out of the comparison.
fn documented_routes(page: &str) -> BTreeSet<(String, String)> {
    const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
    let first_cell = |row: &str| row.trim_start_matches('|').split('|').next().unwrap_or_default().trim().to_owned();
    let is_separator = |row: &str| row.chars().all(|c| "|-: ".contains(c));
    let rows: Vec<&str> = page.lines().map(str::trim).collect();
    let mut routes = BTreeSet::new();
    let mut in_request_table = false;
    for (i, row) in rows.iter().enumerate() {
        if !row.starts_with('|') {
            in_request_table = false;
        } else if rows.get(i + 1).is_some_and(|next| next.starts_with('|') && is_separator(next)) {
            in_request_table = first_cell(row) == "request"; // a table's header
        } else if in_request_table && !is_separator(row) {
            let cell = first_cell(row);
            let found: Vec<(String, String)> = (cell.split('`').skip(1).step_by(2))
                .filter_map(|code| {
                    let (method, path) = code.split_once(' ')?;
                    let path = path.split('?').next().unwrap_or_default();
                    (METHODS.contains(&method) && path.starts_with('/') && !path.contains(' '))
                        .then(|| (method.to_owned(), path.to_owned()))
                })
                .collect();
            assert!(!found.is_empty(), "the HTTP API reference's row {cell:?} documents no `METHOD /path`");
            routes.extend(found);
        }
    }
    routes
}

#[test]
fn the_http_api_reference_documents_exactly_the_routers_routes() {
    let page_path = "docs/src/reference/http-api.md";
    let page = std::fs::read_to_string(batchline_testkit::emulator::repo_root().join(page_path))
        .unwrap_or_else(|e| panic!("reading {page_path}: {e}"));
    let sample = "| request | answer |\n|---|---|\n| `GET /a?x=N&y=2`, `DELETE /a/{id}` `{\"body\"}` | `GET /not/a/request` |\n\n\
                  | code | meaning |\n|---|---|\n| `GET /other` | another table |\n";
    let pairs = |routes: &[(&str, &str)]| routes.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(documented_routes(sample), pairs(&[("GET", "/a"), ("DELETE", "/a/{id}")]));
    let documented = documented_routes(&page);
    let routed: BTreeSet<(String, String)> =
        batchline_submit::api::ROUTES.iter().map(|r| (r.method.to_string(), r.path.to_string())).collect();
    let show = |routes: Vec<&(String, String)>| routes.iter().map(|(m, p)| format!("{m} {p}")).collect::<Vec<_>>();
    let undocumented = show(routed.difference(&documented).collect());
    let unrouted = show(documented.difference(&routed).collect());
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "{page_path} and the router (batchline_submit::api::ROUTES) disagree: routed but not documented \
         {undocumented:?}; documented but not routed {unrouted:?} (a path's parameters must be named as the \
         router names them, e.g. {{id}})"
    );
}

/// The Batch operations the shared Batch adapter calls, read from its source
/// (`.submit_job()` → `batch:SubmitJob`).
fn batch_operations_in_the_shared_adapter() -> BTreeSet<String> {
    let source = include_str!("../../shared/src/adapters/batch.rs");
    let known = [
        "submit_job",
        "terminate_job",
        "cancel_job",
        "list_jobs",
        "describe_jobs",
        "describe_job_queues",
        "describe_compute_environments",
        "tag_resource",
    ];
    known
        .iter()
        .filter(|op| source.contains(&format!(".{op}()")))
        .map(|op| {
            let pascal: String = op.split('_').map(|word| word[..1].to_uppercase() + &word[1..]).collect();
            format!("batch:{pascal}")
        })
        .collect()
}

#[test]
fn job_events_may_make_every_batch_call_the_shared_adapter_makes() {
    // job-events runs all of them: stages submitted, fail fast and deadlines (TerminateJob),
    // the sweep (DescribeJobs) and the stuck-job watch (ListJobs, the queue reads).
    let template = template();
    let (_, function) = resources(&template).into_iter().find(|(name, _)| name == "JobEventsFunction").unwrap();
    let policies = function["Properties"]["Policies"].as_sequence().cloned().unwrap_or_default();
    let granted: BTreeSet<String> = policies
        .iter()
        .flat_map(|p| p["Statement"].as_sequence().cloned().unwrap_or_default())
        .flat_map(|s| strings(&s["Action"]))
        .collect();
    let needed = batch_operations_in_the_shared_adapter();
    assert!(needed.contains("batch:TerminateJob") && needed.contains("batch:DescribeJobQueues"), "{needed:?}");
    let missing: Vec<&String> = needed.difference(&granted).collect();
    assert!(missing.is_empty(), "job-events may not call {missing:?}");
}

#[test]
fn an_alarm_watches_stuck_jobs_and_the_dashboard_shows_them() {
    let template = template();
    let alarms: Vec<&Value> = resources(&template)
        .into_iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::CloudWatch::Alarm"))
        .map(|(_, r)| r)
        .filter(|r| r["Properties"]["MetricName"].as_str() == Some("StuckJobs"))
        .collect();
    assert_eq!(alarms.len(), 1);
    let alarm = &alarms[0]["Properties"];
    // Batchline's namespace: the MetricNamespace parameter, Batchline unless the stack says otherwise
    let namespace = tagged(&alarm["Namespace"]).map(|(tag, value)| (tag, value.as_str().map(str::to_owned)));
    assert_eq!(namespace, Some(("!Ref".to_owned(), Some("MetricNamespace".to_owned()))));
    assert_eq!(template["Parameters"]["MetricNamespace"]["Default"].as_str(), Some("Batchline"));
    assert!(alarm.get("Dimensions").is_none(), "the stack's total, every queue");
    assert_eq!(alarm["ComparisonOperator"].as_str(), Some("GreaterThanThreshold"));
    assert_eq!(alarm["Threshold"].as_u64(), Some(0));
    let (_, dashboard) = resources(&template).into_iter().find(|(name, _)| name == "Dashboard").unwrap();
    let body = serde_yaml::to_string(&dashboard["Properties"]["DashboardBody"]).unwrap();
    assert!(
        body.contains(r#"["${MetricNamespace}", "StuckJobs""#)
            && body.contains(r#"["${MetricNamespace}", "OldestRunnableSeconds"]"#)
    );
}

#[test]
fn the_dashboard_is_json_and_counts_each_stages_jobs_a_map_stages_children_each() {
    let template = template();
    let (_, dashboard) = resources(&template).into_iter().find(|(name, _)| name == "Dashboard").unwrap();
    let (tag, body) = tagged(&dashboard["Properties"]["DashboardBody"]).unwrap();
    assert_eq!(tag, "!Sub");
    let body = body.as_str().unwrap().replace("${MetricNamespace}", "Batchline").replace("${AWS::Region}", "us-east-1");
    let body: serde_json::Value = serde_json::from_str(&body).expect("the dashboard body is JSON once substituted");
    let widget = body["widgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["properties"]["title"].as_str().is_some_and(|t| t.starts_with("Jobs by pipeline stage")))
        .expect("a widget of jobs by pipeline stage");
    let searched: Vec<String> = widget["properties"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line[0]["expression"].as_str().unwrap().to_owned())
        .collect();
    // The metrics lane counts a map's children with their pipeline and stage (tagged or not).
    for metric in ["JobsSucceeded", "JobsFailed", "JobsRunning", "JobsRunnable"] {
        let expected = format!(r#"SEARCH('{{Batchline,Pipeline,Stage}} MetricName="{metric}"', 'Sum', 300)"#);
        assert!(searched.contains(&expected), "{expected} in {searched:?}");
    }
}

#[test]
fn alerts_arrive_alarms_and_blocked_queues_may_use_the_alert_topics_key_and_publish_to_it() {
    let template = template();
    let resource = |name: &str| resources(&template).into_iter().find(|(n, _)| n == name).unwrap().1.clone();
    // The topic is encrypted with the stack's own key, not the AWS-managed alias/aws/sns one
    // (whose policy no alarm or rule can use).
    let topic = resource("AlertTopic");
    assert_eq!(target_of(&topic["Properties"]["KmsMasterKeyId"]).as_deref(), Some("AlertKey"));
    let key = resource("AlertKey");
    let statements = key["Properties"]["KeyPolicy"]["Statement"].as_sequence().unwrap().clone();
    let for_service = |service: &str| {
        statements.iter().find(|s| s["Principal"]["Service"] == service).cloned().unwrap_or_else(|| panic!("{service}"))
    };
    for service in ["cloudwatch.amazonaws.com", "events.amazonaws.com"] {
        let statement = for_service(service);
        assert_eq!(strings(&statement["Action"]), ["kms:Decrypt", "kms:GenerateDataKey*"], "{service}");
    }
    // (EventBridge's KMS requests carry no source keys: a condition would drop every alert.)
    assert!(for_service("events.amazonaws.com").get("Condition").is_none());
    assert_eq!(key["Properties"]["EnableKeyRotation"], true);
    // Both services may publish to the topic; EventBridge only for the blocked-queue rule.
    let policy = resource("AlertTopicPolicy");
    let published = policy["Properties"]["PolicyDocument"]["Statement"].as_sequence().unwrap().clone();
    let publisher = |service: &str| published.iter().find(|s| s["Principal"]["Service"] == service).cloned().unwrap();
    assert_eq!(strings(&publisher("cloudwatch.amazonaws.com")["Action"]), ["sns:Publish"]);
    let events = publisher("events.amazonaws.com");
    assert_eq!(target_of(&events["Condition"]["ArnEquals"]["aws:SourceArn"]).as_deref(), Some("QueueBlockedRule"));
    // Every alarm alerts through the topic
    for (name, alarm) in resources(&template).into_iter().filter(|(_, r)| r["Type"] == "AWS::CloudWatch::Alarm") {
        let actions = alarm["Properties"]["AlarmActions"].as_sequence().unwrap();
        assert!(actions.iter().all(|a| target_of(a).as_deref() == Some("AlertTopic")), "{name}");
    }
    // AND Batch's blocked-queue events of the stack's queues go to it, naming queue, job and reason
    let rule = resource("QueueBlockedRule");
    let pattern = &rule["Properties"]["EventPattern"];
    assert_eq!(strings(&pattern["detail-type"]), ["Batch Job Queue Blocked"]);
    let (_, split) = tagged(&pattern["detail"]["jobQueue"]).expect("!Split of the queue ARNs");
    assert_eq!(target_of(&split[1]).as_deref(), Some("Environment"));
    let target = &rule["Properties"]["Targets"][0];
    assert_eq!(target_of(&target["Arn"]).as_deref(), Some("AlertTopic"));
    let message = target["InputTransformer"]["InputTemplate"].as_str().unwrap();
    for field in ["<queue>", "<job>", "<reason>"] {
        assert!(message.contains(field), "{field} in {message}");
    }
}

#[test]
fn the_books_kept_grants_are_the_templates_kept_comments() {
    // The book's table of grants kept though no test uses them is written from the
    // template's `# kept` comments: a reason changed, added or removed there shows here.
    let root = batchline_testkit::emulator::repo_root();
    let output = std::process::Command::new(root.join(".venv/bin/python"))
        .arg(root.join("devtools/iam/report.py"))
        .arg("--kept-table")
        .output()
        .expect("the IAM report runs (scripts/setup makes .venv)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let generated = String::from_utf8(output.stdout).unwrap();
    let page = root.join("docs/src/explanations/kept-grants.md");
    if std::env::var("BATCHLINE_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&page, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&page).unwrap_or_default();
    assert!(
        committed == generated,
        "{} differs from the template's `# kept` comments; regenerate it with \
         BATCHLINE_BLESS=1 cargo test -p batchline-tests --test integration the_books_kept_grants",
        page.display()
    );
}
