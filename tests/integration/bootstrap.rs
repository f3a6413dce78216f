//! bootstrap against the emulator: provisioning, convergence, teardown and always answering CloudFormation.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use batchline::model::stack::StackConfig;
use batchline::store::keys;
use batchline_bootstrap::cfn::{Request, Status};
use batchline_bootstrap::{answer_within, handle, Clients, Outcome};
use batchline_testkit::emulator::{
    default_network, iam_check, sdk_config, signing_as, test_settings, unique_name, Principal,
};

use crate::common::register;
use batchline_testkit::invocation;
// The request CloudFormation sends, and the stack's RoleBoundary, as the local stack makes them.
use batchline_demo::cloudformation_request as request;
use batchline_demo::configuration::boundary_arn as role_boundary;
use batchline_testkit::response_server::ResponseServer;
use batchline_testkit::table::create_table;
use serde_json::{json, Value};

/// A CloudFormation stack of the test's own, whose environments bootstrap builds signing
/// as the stack's bootstrap function: every call it makes is evaluated against the
/// template's policy for it (devtools/iam).
#[derive(Clone)]
struct Harness {
    clients: Clients,
    settings: batchline::Settings,
    /// The emulator, unsigned: what the test itself looks at.
    sdk: aws_config::SdkConfig,
    batch: aws_sdk_batch::Client,
    iam: aws_sdk_iam::Client,
    ecr: aws_sdk_ecr::Client,
    /// The stack's name: environments are named under it (`<stack>-<tag>`), as bootstrap's
    /// policy requires.
    stack: String,
}

async fn harness(test: &str) -> Harness {
    let sdk = sdk_config().await;
    let settings = test_settings(test);
    create_table(&sdk, &settings.table_name).await.unwrap();
    let stack = unique_name("bs");
    register(&stack, &settings, &json!({}), None);
    Harness {
        clients: Clients::new(&signing_as(&sdk, Principal::Bootstrap, &stack)),
        settings,
        batch: aws_sdk_batch::Client::new(&sdk),
        iam: aws_sdk_iam::Client::new(&sdk),
        ecr: aws_sdk_ecr::Client::new(&sdk),
        sdk,
        stack,
    }
}

impl Harness {
    /// A NamePrefix of the stack's: its name, a dash and `tag`.
    fn prefix(&self, tag: &str) -> String {
        format!("{}-{tag}", self.stack)
    }

    /// Only the network, as CloudFormation sends it (strings, ServiceToken), the prefix,
    /// and the boundary the template passes.
    fn network_only(&self, prefix: &str) -> Value {
        let network = default_network();
        json!({
            "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:batchline-bootstrap",
            "ServiceTimeout": "600",
            "NamePrefix": prefix,
            "Network": {"Subnets": network.subnets.join(","), "SecurityGroups": network.security_groups, "AssignPublicIp": "true"},
            "Roles": {"PermissionsBoundary": role_boundary(&self.stack)}
        })
    }
}

impl Harness {
    /// Sends one request to bootstrap and returns the single answer CloudFormation accepted.
    async fn send(&self, kind: &str, properties: &Value, physical_id: Option<&str>, old: Option<&Value>) -> Value {
        let server = ResponseServer::start(0).await.unwrap();
        let result = handle(
            invocation(request(kind, &server.url, &self.stack, properties, physical_id, old)),
            &self.clients,
            &self.settings,
        )
        .await;
        assert!(result.is_ok(), "{result:?}");
        let answers = server.accepted_answers();
        assert_eq!(answers.len(), 1, "exactly one answer: {:?}", server.received());
        let received = &server.received()[0];
        assert_eq!(received.method, "PUT");
        assert_eq!(received.content_type.as_deref(), Some(""), "the pre-signed URL wants an empty content type");
        answers[0].clone()
    }

    async fn revisions(&self, name: &str) -> Vec<i32> {
        let reply =
            self.batch.describe_job_definitions().job_definition_name(name).status("ACTIVE").send().await.unwrap();
        let mut revisions: Vec<i32> = reply.job_definitions().iter().filter_map(|d| d.revision()).collect();
        revisions.sort();
        revisions
    }

    async fn published(&self) -> Option<StackConfig> {
        let item = aws_sdk_dynamodb::Client::new(&self.sdk)
            .get_item()
            .table_name(&self.settings.table_name)
            .key("pk", AttributeValue::S(keys::CONFIG_PK.into()))
            .key("sk", AttributeValue::S(keys::CONFIG_SK.into()))
            .send()
            .await
            .unwrap();
        let document = item.item()?.get("document")?.as_s().ok()?.clone();
        Some(serde_json::from_str(&document).unwrap())
    }
}

#[tokio::test]
async fn create_with_only_the_network_builds_the_recipes_environment() {
    // GIVEN only the network, as CloudFormation sends it
    let h = harness("bs-create").await;
    let prefix = h.prefix("c");

    // WHEN bootstrap handles Create
    let answer = h.send("Create", &h.network_only(&prefix), None, None).await;

    // THEN it answers SUCCESS with the outputs
    assert_eq!(answer["Status"], "SUCCESS", "{answer}");
    assert_eq!(answer["PhysicalResourceId"], format!("{prefix}-environment"));
    assert_eq!(answer["LogicalResourceId"], "Environment");
    let data = &answer["Data"];
    for name in ["ExecutionRoleArn", "JobRoleArn", "RepositoryUri", "JobQueueArn", "JobDefinitionArns"] {
        assert!(data[name].as_str().is_some_and(|v| !v.is_empty()), "{name} in {data}");
    }

    // AND the compute environment is a FARGATE one, ENABLED and VALID, max 256 vCPUs
    let ces =
        h.batch.describe_compute_environments().compute_environments(format!("{prefix}-default")).send().await.unwrap();
    let ce = &ces.compute_environments()[0];
    assert_eq!((ce.state().unwrap().as_str(), ce.status().unwrap().as_str()), ("ENABLED", "VALID"));
    let resources = ce.compute_resources().unwrap();
    assert_eq!(resources.r#type().unwrap().as_str(), "FARGATE");
    assert_eq!(resources.maxv_cpus(), Some(256));
    assert_eq!(resources.subnets(), default_network().subnets.as_slice());

    // AND the queue is ENABLED with priority 1 on it
    let queues = h.batch.describe_job_queues().job_queues(format!("{prefix}-default")).send().await.unwrap();
    let queue = &queues.job_queues()[0];
    assert_eq!((queue.state().unwrap().as_str(), queue.priority()), ("ENABLED", Some(1)));
    assert_eq!(queue.compute_environment_order()[0].compute_environment(), ce.compute_environment_arn());
    assert_eq!(data["JobQueueArn"].as_str(), queue.job_queue_arn());

    // AND the job definition is 0.25 vCPU / 512 MiB on Fargate with awslogs to /aws/batch/job
    let definitions = h
        .batch
        .describe_job_definitions()
        .job_definition_name(format!("{prefix}-default"))
        .status("ACTIVE")
        .send()
        .await
        .unwrap();
    let definition = &definitions.job_definitions()[0];
    assert_eq!(definition.platform_capabilities()[0].as_str(), "FARGATE");
    let container = definition.container_properties().unwrap();
    let requirement = |kind: &str| {
        container
            .resource_requirements()
            .iter()
            .find(|r| r.r#type().map(|t| t.as_str()) == Some(kind))
            .and_then(|r| r.value())
            .map(str::to_owned)
    };
    assert_eq!(requirement("VCPU").as_deref(), Some("0.25"));
    assert_eq!(requirement("MEMORY").as_deref(), Some("512"));
    let logs = container.log_configuration().unwrap();
    assert_eq!(logs.log_driver().map(|d| d.as_str()), Some("awslogs"));
    assert_eq!(logs.options().unwrap()["awslogs-group"], "/aws/batch/job");
    assert_eq!(container.network_configuration().unwrap().assign_public_ip().unwrap().as_str(), "ENABLED");
    assert_eq!(container.execution_role_arn(), data["ExecutionRoleArn"].as_str());
    assert_eq!(container.image(), Some("public.ecr.aws/docker/library/python:3.12-alpine"));
    let retry = definition.retry_strategy().unwrap();
    assert_eq!(retry.attempts(), Some(3));
    assert!(retry.evaluate_on_exit().iter().any(|e| e.on_reason() == Some("CannotPullContainerError*")));
    assert_eq!(data["JobDefinitionArns"].as_str(), definition.job_definition_arn());

    // AND the execution role trusts ECS tasks and has the managed policy
    let role = h.iam.get_role().role_name(format!("{prefix}-execution")).send().await.unwrap();
    assert!(role.role().unwrap().assume_role_policy_document().unwrap_or_default().contains("ecs-tasks.amazonaws.com"));
    let attached = h.iam.list_attached_role_policies().role_name(format!("{prefix}-execution")).send().await.unwrap();
    assert_eq!(attached.attached_policies()[0].policy_name(), Some("AmazonECSTaskExecutionRolePolicy"));

    // AND the repository scans on push
    let repos = h.ecr.describe_repositories().repository_names(format!("{prefix}-jobs")).send().await.unwrap();
    assert!(repos.repositories()[0].image_scanning_configuration().unwrap().scan_on_push());

    // AND the resolved configuration, with ARNs, is published for the other functions
    let published = h.published().await.expect("published");
    assert_eq!(Some(published.job_queues["default"].arn.as_str()), queue.job_queue_arn());
    assert_eq!(Some(published.job_definitions["default"].arn.as_str()), definition.job_definition_arn());
}

#[tokio::test]
async fn create_repeated_changes_nothing_and_update_registers_exactly_one_new_revision() {
    let h = harness("bs-converge").await;
    let prefix = h.prefix("u");
    let properties = h.network_only(&prefix);
    let first = h.send("Create", &properties, None, None).await;
    assert_eq!(first["Status"], "SUCCESS", "{first}");

    // Create again (a retried request): same answer, same id, no new revision
    let again = h.send("Create", &properties, None, None).await;
    assert_eq!(again["Status"], "SUCCESS");
    assert_eq!(again["PhysicalResourceId"], first["PhysicalResourceId"]);
    assert_eq!(again["Data"], first["Data"]);
    assert_eq!(h.revisions(&format!("{prefix}-default")).await, [1]);

    // Update changing memory: one new revision, everything else in place
    let mut bigger = properties.clone();
    bigger["JobDefinitions"] = json!({"default": {"Memory": "1024"}});
    let physical_id = first["PhysicalResourceId"].as_str().unwrap();
    let updated = h.send("Update", &bigger, Some(physical_id), Some(&properties)).await;
    assert_eq!(updated["Status"], "SUCCESS", "{updated}");
    assert_eq!(updated["PhysicalResourceId"], physical_id, "stable across updates");
    assert_eq!(h.revisions(&format!("{prefix}-default")).await, [1, 2]);
    for same in ["ExecutionRoleArn", "JobRoleArn", "RepositoryUri", "JobQueueArn", "JobQueueArns"] {
        assert_eq!(updated["Data"][same], first["Data"][same], "{same}");
    }
    assert_ne!(updated["Data"]["JobDefinitionArns"], first["Data"]["JobDefinitionArns"]);
    assert!(updated["Data"]["JobDefinitionArns"].as_str().unwrap().ends_with(":2"));

    // The same update again: nothing new
    h.send("Update", &bigger, Some(physical_id), Some(&bigger)).await;
    assert_eq!(h.revisions(&format!("{prefix}-default")).await, [1, 2]);
}

#[tokio::test]
async fn delete_removes_everything_twice_over_and_keeps_the_repository_unless_told() {
    let h = harness("bs-delete").await;
    for delete_repository in [false, true] {
        // GIVEN an environment
        let prefix = h.prefix(&format!("d{}", u8::from(delete_repository)));
        let mut properties = h.network_only(&prefix);
        properties["Repository"] = json!({"DeleteOnStackDelete": delete_repository.to_string()});
        let created = h.send("Create", &properties, None, None).await;
        assert_eq!(created["Status"], "SUCCESS", "{created}");
        let physical_id = created["PhysicalResourceId"].as_str().unwrap().to_owned();

        // WHEN it is deleted, twice
        let deleted = h.send("Delete", &properties, Some(&physical_id), None).await;
        assert_eq!(deleted["Status"], "SUCCESS", "{deleted}");
        let again = h.send("Delete", &properties, Some(&physical_id), None).await;
        assert_eq!(again["Status"], "SUCCESS", "a second Delete finds nothing and succeeds: {again}");

        // THEN queues, compute environments, job definitions and roles are gone
        let queues = h.batch.describe_job_queues().job_queues(format!("{prefix}-default")).send().await.unwrap();
        assert!(queues.job_queues().iter().all(|q| q.status().map(|s| s.as_str()) == Some("DELETED")), "{queues:?}");
        let ces = h
            .batch
            .describe_compute_environments()
            .compute_environments(format!("{prefix}-default"))
            .send()
            .await
            .unwrap();
        assert!(
            ces.compute_environments().iter().all(|c| c.status().map(|s| s.as_str()) == Some("DELETED")),
            "{ces:?}"
        );
        assert_eq!(h.revisions(&format!("{prefix}-default")).await, Vec::<i32>::new());
        for role in ["execution", "job"] {
            let err = h.iam.get_role().role_name(format!("{prefix}-{role}")).send().await.unwrap_err();
            assert_eq!(batchline::Error::aws("GetRole", err).aws_code(), Some("NoSuchEntity"));
        }
        assert!(h.published().await.is_none());
        // AND the repository only when configured
        let repository = h.ecr.describe_repositories().repository_names(format!("{prefix}-jobs")).send().await;
        assert_eq!(repository.is_ok(), !delete_repository, "DeleteOnStackDelete={delete_repository}");
    }
}

#[tokio::test]
async fn invalid_properties_fail_at_once_and_the_delete_after_succeeds() {
    let h = harness("bs-invalid").await;
    let prefix = h.prefix("i");
    let cases: Vec<(Value, &str)> = vec![
        (json!({"ServiceToken": "x"}), "Network is required"),
        (
            {
                let mut p = h.network_only(&prefix);
                p["JobDefinitions"] = json!({"default": {"Vcpu": "1", "Memory": "1024"}});
                p
            },
            "1 vCPU with 1024 MiB is not a valid Fargate size",
        ),
        (
            {
                let mut p = h.network_only(&prefix);
                p["Unknown"] = json!("x");
                p
            },
            "unknown field `Unknown`",
        ),
        (
            {
                let mut p = h.network_only(&prefix);
                p["JobQueues"] = json!({"bad name!": {}});
                p
            },
            "JobQueues.bad name!: keys are",
        ),
        (json!("not an object"), "invalid"),
    ];
    for (properties, reason) in cases {
        let started = Instant::now();
        let answer = h.send("Create", &properties, None, None).await;
        assert_eq!(answer["Status"], "FAILED", "{answer}");
        assert!(answer["Reason"].as_str().unwrap().contains(reason), "{reason:?} in {answer}");
        assert!(started.elapsed() < Duration::from_secs(10), "no waiting for a deadline");

        // The Delete CloudFormation sends after the failed Create succeeds
        let physical_id = answer["PhysicalResourceId"].as_str().unwrap().to_owned();
        let deleted = h.send("Delete", &properties, Some(&physical_id), None).await;
        assert_eq!(deleted["Status"], "SUCCESS", "{deleted}");
        assert_eq!(deleted["PhysicalResourceId"], physical_id.as_str());
    }
    // Nothing was created
    let queues = h.batch.describe_job_queues().job_queues(format!("{prefix}-default")).send().await.unwrap();
    assert!(queues.job_queues().is_empty());
}

#[tokio::test]
async fn a_response_url_failing_twice_gets_exactly_one_accepted_answer() {
    let h = harness("bs-retry").await;
    let server = ResponseServer::start(2).await.unwrap();
    let properties = json!({"ServiceToken": "x"});
    handle(invocation(request("Create", &server.url, &h.stack, &properties, None, None)), &h.clients, &h.settings)
        .await
        .unwrap();
    let received = server.received();
    assert_eq!(received.len(), 3);
    assert_eq!(received.iter().filter(|r| r.accepted).count(), 1);
    assert!(received.iter().all(|r| r.body == received[0].body), "the same answer each time");
    assert_eq!(server.accepted_answers()[0]["Status"], "FAILED");
}

fn bare_request(url: &str) -> Request {
    serde_json::from_value(request("Create", url, "batchline", &json!({}), None, None)).unwrap()
}

#[tokio::test]
async fn a_panic_in_the_work_is_answered_failed() {
    let request = bare_request("http://unused");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let answer = answer_within(&request, deadline, async {
        let fields: Vec<u8> = Vec::new();
        // A bug that panics on some input.
        #[allow(clippy::useless_vec)]
        let value = fields[3];
        Outcome {
            status: Status::Success,
            reason: format!("{value}"),
            physical_resource_id: String::new(),
            data: Default::default(),
        }
    })
    .await;
    assert_eq!(answer.status, Status::Failed);
    assert!(answer.reason.contains("bootstrap panicked"), "{}", answer.reason);
    assert!(answer.reason.contains("index out of bounds"), "{}", answer.reason);
    assert_eq!(answer.physical_resource_id, "Environment-unprovisioned");
}

#[tokio::test]
async fn work_still_running_at_the_deadline_is_answered_failed_before_it() {
    let request = bare_request("http://unused");
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    let answer = answer_within(&request, deadline, async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Outcome {
            status: Status::Success,
            reason: String::new(),
            physical_resource_id: String::new(),
            data: Default::default(),
        }
    })
    .await;
    assert_eq!(answer.status, Status::Failed);
    assert!(answer.reason.contains("did not finish before its deadline"), "{}", answer.reason);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_payload_that_is_no_request_is_an_error_naming_it() {
    let h = harness("bs-noreq").await;
    let err = handle(invocation(json!({"detail-type": "Scheduled Event"})), &h.clients, &h.settings).await.unwrap_err();
    assert!(err.to_string().contains("not a CloudFormation custom resource request"), "{err}");
}

/// The environment of `prefix`, sharing its role names with every other one of the test
/// (`shared`), as two environments may.
impl Harness {
    fn sharing_roles(&self, prefix: &str, shared: &str) -> Value {
        let mut properties = self.network_only(prefix);
        properties["Roles"]["ExecutionRoleName"] = json!(format!("{shared}-execution"));
        properties["Roles"]["JobRoleName"] = json!(format!("{shared}-job"));
        properties
    }
}

impl Harness {
    async fn queue_status(&self, name: &str) -> Option<String> {
        let queues = self.batch.describe_job_queues().job_queues(name).send().await.unwrap();
        queues
            .job_queues()
            .iter()
            .find(|q| q.status().map(|s| s.as_str()) != Some("DELETED"))
            .map(|q| q.state().map(|s| s.as_str().to_owned()).unwrap_or_default())
    }

    async fn role_exists(&self, name: &str) -> bool {
        self.iam.get_role().role_name(name).send().await.is_ok()
    }

    async fn owner(&self) -> Option<String> {
        use batchline::store::ConfigStore;
        let store =
            batchline::store::DynamoStore::new(aws_sdk_dynamodb::Client::new(&self.sdk), &self.settings.table_name);
        store.load_published().await.unwrap().and_then(|p| p.owner)
    }
}

#[tokio::test]
async fn a_name_prefix_change_replaces_the_environment_and_deleting_the_old_spares_the_new() {
    // GIVEN environment a, then an Update to prefix b (a replacement: a new physical id)
    let h = harness("bs-replace").await;
    let (a, b, shared) = (h.prefix("a"), h.prefix("b"), unique_name("brs"));
    let (props_a, props_b) = (h.sharing_roles(&a, &shared), h.sharing_roles(&b, &shared));
    let created = h.send("Create", &props_a, None, None).await;
    let id_a = created["PhysicalResourceId"].as_str().unwrap().to_owned();
    let updated = h.send("Update", &props_b, Some(&id_a), Some(&props_a)).await;
    assert_eq!(updated["Status"], "SUCCESS", "{updated}");
    let id_b = updated["PhysicalResourceId"].as_str().unwrap().to_owned();
    assert_ne!(id_a, id_b, "a new physical id: CloudFormation replaces");
    // WHEN CloudFormation deletes the old physical id with the old properties
    let deleted = h.send("Delete", &props_a, Some(&id_a), None).await;
    assert_eq!(deleted["Status"], "SUCCESS", "{deleted}");
    // THEN the new environment is whole and published, the old one gone, shared roles kept
    let published = h.published().await.expect("the new environment's configuration stays published");
    assert_eq!(published.name_prefix, b);
    assert_eq!(h.owner().await.as_deref(), Some(id_b.as_str()));
    assert_eq!(h.queue_status(&format!("{b}-default")).await.as_deref(), Some("ENABLED"));
    assert_eq!(h.queue_status(&format!("{a}-default")).await, None);
    assert!(h.role_exists(&format!("{shared}-execution")).await && h.role_exists(&format!("{shared}-job")).await);
    // AND the new environment takes work
    let clients = batchline_submit::Clients::new(&signing_as(&h.sdk, Principal::Submit, &h.stack), &h.settings);
    let request = json!({"version": "2.0", "rawPath": "/jobs", "requestContext": {"http": {"method": "POST", "path": "/jobs"}},
                         "body": "{}", "isBase64Encoded": false});
    let answer = batchline_submit::handle(invocation(request), &clients).await.unwrap();
    assert_eq!(answer["statusCode"], 202, "{answer}");
}

#[tokio::test]
async fn a_rolled_back_prefix_change_deletes_the_new_environment_and_keeps_the_old() {
    // GIVEN a, an Update to b, and the rollback's Update back to a (from id b)
    let h = harness("bs-rollback").await;
    let (a, b, shared) = (h.prefix("a"), h.prefix("b"), unique_name("bls"));
    let (props_a, props_b) = (h.sharing_roles(&a, &shared), h.sharing_roles(&b, &shared));
    let id_a = h.send("Create", &props_a, None, None).await["PhysicalResourceId"].as_str().unwrap().to_owned();
    let id_b = h.send("Update", &props_b, Some(&id_a), Some(&props_a)).await["PhysicalResourceId"]
        .as_str()
        .unwrap()
        .to_owned();
    let back = h.send("Update", &props_a, Some(&id_b), Some(&props_b)).await;
    assert_eq!((back["Status"].as_str(), back["PhysicalResourceId"].as_str()), (Some("SUCCESS"), Some(id_a.as_str())));
    // WHEN the cleanup deletes the new physical id with the new properties
    let deleted = h.send("Delete", &props_b, Some(&id_b), None).await;
    assert_eq!(deleted["Status"], "SUCCESS", "{deleted}");
    // THEN a is whole and published, b gone
    assert_eq!(h.published().await.map(|c| c.name_prefix), Some(a.clone()));
    assert_eq!(h.owner().await.as_deref(), Some(id_a.as_str()));
    assert_eq!(h.queue_status(&format!("{a}-default")).await.as_deref(), Some("ENABLED"));
    assert_eq!(h.queue_status(&format!("{b}-default")).await, None);
    assert!(h.role_exists(&format!("{shared}-execution")).await);
}

#[tokio::test]
async fn a_failed_prefix_change_removes_what_it_created_and_answers_with_the_old_id() {
    // GIVEN environment a, and an Update to prefix b whose job definitions cannot be registered
    let h = harness("bs-failed-change").await;
    let (a, b, shared) = (h.prefix("a"), h.prefix("b"), unique_name("bfs"));
    let (props_a, props_b) = (h.sharing_roles(&a, &shared), h.sharing_roles(&b, &shared));
    let id_a = h.send("Create", &props_a, None, None).await["PhysicalResourceId"].as_str().unwrap().to_owned();
    let rules = std::collections::BTreeMap::from([(
        "batch:RegisterJobDefinition",
        batchline_testkit::faults::Rates { fail: 1.0, lose: 0.0 },
    )]);
    let scope = batchline_testkit::faults::FaultScope::enable(&unique_name("bsfail"), 1, &rules).await.unwrap();
    let faulty = signing_as(&scope.sdk_config().await, Principal::Bootstrap, &h.stack);
    let failing = Harness { clients: Clients::new(&faulty), ..h.clone() };
    // WHEN the Update fails part-way
    let answer = failing.send("Update", &props_b, Some(&id_a), Some(&props_a)).await;
    scope.disable().await.ok();
    // THEN it answers FAILED with the old id, having removed b's queue and environment
    assert_eq!(
        (answer["Status"].as_str(), answer["PhysicalResourceId"].as_str()),
        (Some("FAILED"), Some(id_a.as_str()))
    );
    assert!(answer["Reason"].as_str().unwrap().contains("was removed"), "{answer}");
    assert_eq!(h.queue_status(&format!("{b}-default")).await, None);
    let environments =
        h.batch.describe_compute_environments().compute_environments(format!("{b}-default")).send().await.unwrap();
    assert!(environments.compute_environments().iter().all(|c| c.status().map(|s| s.as_str()) == Some("DELETED")));
    // AND a is untouched: published, its queue and the shared roles there
    assert_eq!(h.owner().await.as_deref(), Some(id_a.as_str()));
    assert_eq!(h.queue_status(&format!("{a}-default")).await.as_deref(), Some("ENABLED"));
    assert!(h.role_exists(&format!("{shared}-execution")).await && h.role_exists(&format!("{shared}-job")).await);
}

#[tokio::test]
async fn a_configuration_published_by_the_previous_release_is_removed_only_by_its_own_environment() {
    // GIVEN environment a whose configuration item has no owner, as the previous release wrote it
    let h = harness("bs-legacy-config").await;
    let (a, other) = (h.prefix("a"), h.prefix("o"));
    let props_a = h.network_only(&a);
    let id_a = h.send("Create", &props_a, None, None).await["PhysicalResourceId"].as_str().unwrap().to_owned();
    aws_sdk_dynamodb::Client::new(&h.sdk)
        .update_item()
        .table_name(&h.settings.table_name)
        .key("pk", AttributeValue::S(keys::CONFIG_PK.into()))
        .key("sk", AttributeValue::S(keys::CONFIG_SK.into()))
        .update_expression("REMOVE #owner")
        .expression_attribute_names("#owner", "owner")
        .send()
        .await
        .unwrap();
    assert_eq!(h.owner().await, None);
    // WHEN another environment is deleted, THEN the configuration stays
    let other_props = h.network_only(&other);
    let deleted = h.send("Delete", &other_props, Some(&format!("{other}-environment")), None).await;
    assert_eq!(deleted["Status"], "SUCCESS");
    assert!(h.published().await.is_some(), "not the other environment's to remove");
    // WHEN its own environment is deleted, THEN it goes
    h.send("Delete", &props_a, Some(&id_a), None).await;
    assert!(h.published().await.is_none());
}

/// The environment of `prefix` (padded to NamePrefix's 40 characters) with `count` job
/// definitions whose keys have the 40 characters a key may have: the longest ARNs there are.
impl Harness {
    fn with_definitions(&self, prefix: &str, count: usize) -> Value {
        let mut properties = self.network_only(&format!("{prefix:x<40}"));
        let definitions: serde_json::Map<String, Value> =
            (0..count).map(|i| (format!("{:x<40}", format!("d{i}-")), json!({}))).collect();
        properties["JobDefinitions"] = Value::Object(definitions);
        properties
    }
}

#[tokio::test]
async fn the_largest_configuration_the_document_allows_answers_within_cloudformations_4096_bytes() {
    let h = harness("bs-largest").await;
    let prefix = h.prefix("z");
    // GIVEN the most job definitions with the longest names the size check lets through
    let fits = |count: usize| {
        let payload = request("Create", "http://unused", &h.stack, &h.with_definitions(&prefix, count), None, None);
        let request = Request::from_payload(&payload).unwrap();
        let declared = batchline_bootstrap::declaration::declare(&request.resource_properties).unwrap();
        batchline_bootstrap::largest_answer(&request, &declared) <= 4096
    };
    let largest = (1..200).take_while(|n| fits(*n)).last().unwrap();
    assert!(largest >= 10, "at least ten of the longest job definitions fit: {largest}");

    // WHEN one more is asked for, THEN it is refused before anything is created
    let refused = h.send("Create", &h.with_definitions(&prefix, largest + 1), None, None).await;
    assert_eq!(refused["Status"], "FAILED", "{refused}");
    assert!(refused["Reason"].as_str().unwrap().contains("over its 4096"), "{refused}");
    assert_eq!(h.queue_status(&format!("{prefix:x<40}-default")).await, None);

    // WHEN the largest is deployed
    let server = ResponseServer::start(0).await.unwrap();
    let payload = request("Create", &server.url, &h.stack, &h.with_definitions(&prefix, largest), None, None);
    handle(invocation(payload), &h.clients, &h.settings).await.unwrap();
    // THEN CloudFormation's answer fits, and every Data key is whole and usable
    let body = &server.received()[0].body;
    assert!(body.len() <= 4096, "{} bytes", body.len());
    let answer: Value = serde_json::from_str(body).unwrap();
    assert_eq!(answer["Status"], "SUCCESS", "{answer}");
    let arns: Vec<&str> = answer["Data"]["JobDefinitionArns"].as_str().unwrap().split(',').collect();
    assert_eq!(arns.len(), largest);
    let described = h
        .batch
        .describe_job_definitions()
        .set_job_definitions(Some(arns.iter().map(|a| a.to_string()).collect()))
        .send()
        .await
        .unwrap();
    assert_eq!(described.job_definitions().len(), largest, "every ARN names a registered job definition");
    let queue = answer["Data"]["JobQueueArns"].as_str().unwrap();
    assert_eq!(queue, answer["Data"]["JobQueueArn"].as_str().unwrap());
    for key in ["ExecutionRoleArn", "JobRoleArn", "RepositoryUri"] {
        assert!(!answer["Data"][key].as_str().unwrap().is_empty(), "{key}");
    }
}

#[tokio::test]
async fn the_roles_carry_the_stacks_boundary_created_or_found_under_its_path() {
    let h = harness("bs-boundary").await;
    let prefix = h.prefix("p");
    // GIVEN a role of the stack, under its path, that exists without a boundary (made by hand)
    h.iam
        .create_role()
        .role_name(format!("{prefix}-job"))
        .path(format!("/batchline/{}/", h.stack))
        .assume_role_policy_document(r#"{"Version":"2012-10-17","Statement":[]}"#)
        .send()
        .await
        .unwrap();
    // WHEN bootstrap creates the environment
    let answer = h.send("Create", &h.network_only(&prefix), None, None).await;
    assert_eq!(answer["Status"], "SUCCESS", "{answer}");
    // THEN both roles — the one it created and the one it found — are the stack's, under
    // its path, with RoleBoundary
    for role in ["execution", "job"] {
        let found = h.iam.get_role().role_name(format!("{prefix}-{role}")).send().await.unwrap();
        let found = found.role().unwrap();
        assert_eq!(found.path(), format!("/batchline/{}/", h.stack), "{role}");
        let boundary = found.permissions_boundary().and_then(|b| b.permissions_boundary_arn());
        assert_eq!(boundary, Some(role_boundary(&h.stack).as_str()), "{role}");
    }
}

#[tokio::test]
async fn a_role_outside_the_stacks_path_is_never_taken_over_even_named_by_a_forged_request() {
    // GIVEN the stack's own Lambda role, as SAM names it (<stack>-<Function>Role-<suffix>),
    // outside Batchline's path, trusted by Lambda only
    let h = harness("bs-hijack").await;
    let victim = format!("{}-BootstrapFunctionRole-Q1W2E3", h.stack);
    let lambda_trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    h.iam.create_role().role_name(&victim).assume_role_policy_document(lambda_trust).send().await.unwrap();
    // WHEN a request to bootstrap names it as the job role
    let mut properties = h.network_only(&h.prefix("h"));
    properties["Roles"]["JobRoleName"] = json!(victim);
    let answer = h.send("Create", &properties, None, None).await;
    // THEN bootstrap refuses, naming the role and the path it keeps to
    assert_eq!(answer["Status"], "FAILED", "{answer}");
    let path = format!("/batchline/{}/", h.stack);
    assert!(answer["Reason"].as_str().unwrap().contains(&format!("role {victim} exists outside {path}")), "{answer}");
    // AND the role is as it was: trusted by Lambda only, without a boundary
    let found = h.iam.get_role().role_name(&victim).send().await.unwrap();
    let found = found.role().unwrap();
    let trust = urlencoding::decode(found.assume_role_policy_document().unwrap_or_default()).unwrap().into_owned();
    assert!(trust.contains("lambda.amazonaws.com") && !trust.contains("ecs-tasks"), "{trust}");
    assert!(found.permissions_boundary().is_none());
    // AND bootstrap's policy itself denies every change to it (the code's check is not the only one)
    let victim_arn = found.arn();
    for action in
        ["iam:GetRole", "iam:UpdateAssumeRolePolicy", "iam:DeleteRolePolicy", "iam:DeleteRole", "iam:PassRole"]
    {
        let verdict = iam_check(&h.stack, Principal::Bootstrap, action, victim_arn);
        assert_eq!(verdict["allowed"], false, "{action}: {verdict}");
    }
    // AND a Delete naming it leaves it alone
    let deleted = h.send("Delete", &properties, Some(&format!("{}-environment", h.prefix("h"))), None).await;
    assert_eq!(deleted["Status"], "SUCCESS", "{deleted}");
    assert!(h.role_exists(&victim).await, "not Batchline's to delete");
}
