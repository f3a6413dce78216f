//! `batchline-bootstrap`: the CloudFormation custom resource that provisions and tears down the Batch environment.
//!
//! The resource's properties are the stack configuration document
//! ([`declaration`]). Create and Update converge the environment on it and
//! publish the resolved configuration (with ARNs) to the table; Delete tears it down.
//!
//! Whatever happens, CloudFormation gets exactly one answer at the ResponseURL — a custom
//! resource that never answers hangs its stack for an hour. The work runs as its own task
//! with a deadline [`ANSWER_MARGIN`] before the function's own; if it is still running
//! then, or panics, or fails, the answer is FAILED with the reason. Invalid properties
//! fail at once, before anything is created, so a Delete after a failed Create has
//! nothing to do and succeeds. The physical resource id is `<NamePrefix>-environment`: it
//! stays the same across updates, and a changed prefix makes CloudFormation replace the
//! environment (create the new one, then delete the old — see [`provision`] for how the
//! two keep apart). An Update that changes the prefix and fails removes what it created
//! of the new environment (sparing what the old one uses) and answers FAILED with the old
//! id, so the rollback finds the old environment as it was and nothing of the new one.

pub mod cfn;
pub mod declaration;
pub mod provision;

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::SdkConfig;
use batchline::model::stack::StackConfig;
use batchline::{Error, Settings};
use cfn::{Request, Response, Status};
use declaration::Declared;
use lambda_runtime::LambdaEvent;
use serde_json::{json, Map, Value};
use tokio::time::Instant;
use tracing::{error, info, Instrument};

/// Time kept back from the function's deadline to answer CloudFormation.
pub const ANSWER_MARGIN: Duration = Duration::from_secs(15);
/// Attempts to deliver the answer.
pub const ANSWER_ATTEMPTS: u32 = 5;

/// The AWS clients (and HTTP client, for the answer) this function uses, built once per container.
#[derive(Clone)]
pub struct Clients {
    pub batch: aws_sdk_batch::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub ecr: aws_sdk_ecr::Client,
    pub iam: aws_sdk_iam::Client,
    pub http: aws_smithy_runtime_api::client::http::SharedHttpConnector,
    /// The region the environment is built in (for log configuration).
    pub region: String,
}

impl Clients {
    pub fn new(sdk: &SdkConfig) -> Self {
        Clients {
            batch: aws_sdk_batch::Client::new(sdk),
            dynamodb: aws_sdk_dynamodb::Client::new(sdk),
            ecr: aws_sdk_ecr::Client::new(sdk),
            iam: aws_sdk_iam::Client::new(sdk),
            http: cfn::answer_connector(),
            region: sdk.region().map(|r| r.to_string()).unwrap_or_else(|| "us-east-1".into()),
        }
    }

    /// The clients [`provision`] needs, lent to it, building in the CloudFormation stack `stack`.
    pub fn provisioning<'a>(&'a self, stack: &'a str) -> provision::Aws<'a> {
        provision::Aws {
            batch: &self.batch,
            dynamodb: &self.dynamodb,
            ecr: &self.ecr,
            iam: &self.iam,
            region: &self.region,
            stack,
        }
    }
}

/// What the work decided; becomes the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: Status,
    pub reason: String,
    pub physical_resource_id: String,
    pub data: Map<String, Value>,
}

impl Outcome {
    fn failed(reason: impl Into<String>, physical_resource_id: String) -> Self {
        Outcome { status: Status::Failed, reason: reason.into(), physical_resource_id, data: Map::new() }
    }
}

/// Handles one custom resource request: does the work, answers CloudFormation once.
pub async fn handle(event: LambdaEvent<Value>, clients: &Clients, settings: &Settings) -> Result<Value, Error> {
    let request = Request::from_payload(&event.payload).ok_or_else(|| {
        // Without a ResponseURL there is no one to answer; say so loudly.
        Error::InvalidEvent(format!(
            "not a CloudFormation custom resource request (no ResponseURL): {}",
            batchline::event_kind(&event.payload)
        ))
    })?;
    info!(request_type = %request.request_type, logical_id = %request.logical_resource_id, "custom resource request");
    let deadline = deadline_from(event.context.deadline);
    let work = run(request.clone(), clients.clone(), settings.table_name.clone(), deadline);
    let response = answer_within(&request, deadline, work).await;
    cfn::send(&clients.http, &request.response_url, &response, ANSWER_ATTEMPTS).await.map_err(|e| {
        error!(error = %e, "CloudFormation was not answered");
        Error::Unanswered(e.to_string())
    })?;
    Ok(json!({ "Status": response.status, "PhysicalResourceId": response.physical_resource_id }))
}

/// The instant `ANSWER_MARGIN` before the invocation's deadline (epoch milliseconds).
pub fn deadline_from(deadline_ms: u64) -> Instant {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default();
    let left = Duration::from_millis(deadline_ms.saturating_sub(now_ms)).saturating_sub(ANSWER_MARGIN);
    Instant::now() + left
}

/// Runs `work` as its own task and turns whatever it does — finishes, fails, panics, or
/// is still running at `deadline` — into the one answer for CloudFormation.
pub async fn answer_within<F>(request: &Request, deadline: Instant, work: F) -> Response
where
    F: Future<Output = Outcome> + Send + 'static,
{
    let fallback_id = fallback_physical_id(request);
    // In the invocation's span, so the work's lines carry its request and trace ids.
    let mut task = tokio::spawn(work.in_current_span());
    let outcome = match tokio::time::timeout_at(deadline, &mut task).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(join_error)) => {
            let why = if join_error.is_panic() {
                let panic = join_error.into_panic();
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                format!("bootstrap panicked: {message}")
            } else {
                "bootstrap's work was cancelled".to_owned()
            };
            error!(reason = %why, "work failed");
            Outcome::failed(why, fallback_id)
        }
        Err(_) => {
            task.abort();
            error!("work still running at the deadline");
            Outcome::failed(
                "bootstrap did not finish before its deadline; see its logs. Retry the deployment (the work converges), or raise the function's timeout",
                fallback_id,
            )
        }
    };
    Response::new(request, outcome.status, outcome.reason, outcome.physical_resource_id, outcome.data)
}

/// The physical id when the properties say nothing usable: the one CloudFormation has, or
/// one made from the logical id.
fn fallback_physical_id(request: &Request) -> String {
    request
        .physical_resource_id
        .clone()
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| format!("{}-unprovisioned", request.logical_resource_id))
}

/// `<NamePrefix>-environment`.
pub fn physical_id(config: &Declared) -> String {
    format!("{}-environment", config.name_prefix)
}

/// The size of the answer CloudFormation would get once `config` is converged, at its
/// largest: every ARN in this request's partition, region and account (from its StackId),
/// job definition revisions of nine digits. CloudFormation refuses answers over 4,096
/// bytes — and a truncated `JobQueueArns` would silently stop the Batch event rule from
/// matching — so a configuration whose answer could exceed it is refused before anything
/// is created.
pub fn largest_answer(request: &Request, config: &Declared) -> usize {
    let parts: Vec<&str> = request.stack_id.split(':').collect();
    let part = |i: usize, default: &'static str| parts.get(i).copied().filter(|p| !p.is_empty()).unwrap_or(default);
    let (partition, region, account) = (part(1, "aws-us-gov"), part(3, "ap-southeast-3"), part(4, "123456789012"));
    let domain = if partition == "aws-cn" { "amazonaws.com.cn" } else { "amazonaws.com" };
    let converged = config.assume_provisioned(|kind, name| match kind {
        "role" => format!("arn:{partition}:iam::{account}:role/{name}"),
        "repository" => format!("{account}.dkr.ecr.{region}.{domain}/{name}"),
        "job-definition" => format!("arn:{partition}:batch:{region}:{account}:job-definition/{name}:999999999"),
        _ => format!("arn:{partition}:batch:{region}:{account}:{kind}/{name}"),
    });
    let answer = Response::new(request, Status::Success, CONVERGED, physical_id(config), answer_data(&converged));
    serde_json::to_vec(&answer).map(|body| body.len()).unwrap_or(usize::MAX)
}

/// The answer's `Data`: the outputs of a converged configuration.
fn answer_data(config: &StackConfig) -> Map<String, Value> {
    provision::outputs(config).into_iter().map(|(k, v)| (k.to_owned(), Value::String(v))).collect()
}

/// The reason of a successful Create or Update.
const CONVERGED: &str = "environment converged";

async fn run(request: Request, clients: Clients, table: String, deadline: Instant) -> Outcome {
    let fallback_id = fallback_physical_id(&request);
    let Some(stack) = request.stack_name() else {
        let why = format!(
            "StackId {:?} is no CloudFormation stack's ARN: bootstrap builds only inside a stack",
            request.stack_id
        );
        // Nothing was ever built for such a request, so there is nothing to delete.
        return match request.request_type.as_str() {
            "Delete" => Outcome {
                status: Status::Success,
                reason: "nothing to delete".into(),
                physical_resource_id: fallback_id,
                data: Map::new(),
            },
            _ => Outcome::failed(why, fallback_id),
        };
    };
    let aws = clients.provisioning(stack);
    match request.request_type.as_str() {
        "Create" | "Update" => create_or_update(&request, aws, &table, deadline, fallback_id).await,
        "Delete" => delete(&request, aws, &table, deadline, fallback_id).await,
        other => {
            Outcome::failed(format!("unknown RequestType {other:?}: expected Create, Update or Delete"), fallback_id)
        }
    }
}

async fn create_or_update(
    request: &Request,
    aws: provision::Aws<'_>,
    table: &str,
    deadline: Instant,
    fallback_id: String,
) -> Outcome {
    let config = match declaration::declare(&request.resource_properties)
        .and_then(|config| declaration::check_in_stack(&config, request.place(aws.stack, aws.region)).map(|()| config))
    {
        Ok(config) => config,
        Err(problems) => return Outcome::failed(problems.to_string(), fallback_id),
    };
    let previous = request.old_resource_properties.as_ref().and_then(|old| declaration::declare(old).ok());
    // A changed prefix is a replacement: the old environment is deleted by
    // CloudFormation's Delete of the old physical id, not here.
    let replaced = previous.as_ref().filter(|p| p.name_prefix != config.name_prefix);
    let same_environment = previous.as_ref().filter(|p| p.name_prefix == config.name_prefix);
    let id = physical_id(&config);
    let largest = largest_answer(request, &config);
    if largest > cfn::MAX_BODY_BYTES {
        let reason = format!(
            "invalid stack configuration: the answer to CloudFormation would be up to {largest} bytes, over its {} (JobDefinitionArns lists {} job definitions, JobQueueArns {} queues): use fewer of them, shorter keys or a shorter NamePrefix",
            cfn::MAX_BODY_BYTES,
            config.job_definitions.len(),
            config.job_queues.len()
        );
        return Outcome::failed(reason, fallback_id);
    }
    match provision::converge(aws, table, &config, same_environment, &id, deadline).await {
        Ok(resolved) => Outcome {
            status: Status::Success,
            reason: CONVERGED.into(),
            physical_resource_id: id,
            data: answer_data(&resolved),
        },
        Err(err) => match replaced {
            Some(old) => {
                let cleaned =
                    provision::delete_resources(aws, &config, &provision::InUse::by_declared(old), deadline).await;
                let reason = match cleaned {
                    Ok(()) => format!("{err}; what was created under the new NamePrefix was removed"),
                    Err(cleanup) => format!(
                        "{err}; removing what was created under the new NamePrefix failed too ({cleanup}): delete the {}-* resources by hand",
                        config.name_prefix
                    ),
                };
                Outcome::failed(reason, fallback_id)
            }
            None => Outcome::failed(err.to_string(), id),
        },
    }
}

async fn delete(
    request: &Request,
    aws: provision::Aws<'_>,
    table: &str,
    deadline: Instant,
    fallback_id: String,
) -> Outcome {
    match declaration::declare(&request.resource_properties) {
        // These properties never passed validation, so nothing was created from them.
        Err(_) => Outcome {
            status: Status::Success,
            reason: "nothing to delete".into(),
            physical_resource_id: fallback_id,
            data: Map::new(),
        },
        Ok(config) => match provision::teardown(aws, table, &config, &fallback_id, deadline).await {
            Ok(()) => Outcome {
                status: Status::Success,
                reason: "environment deleted".into(),
                physical_resource_id: fallback_id,
                data: Map::new(),
            },
            Err(err) => Outcome::failed(err.to_string(), fallback_id),
        },
    }
}
