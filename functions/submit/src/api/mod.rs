//! The HTTP API (API Gateway HTTP API, payload format 2.0): one module per resource, a route table, answers as JSON.
//!
//! Every caller mistake is a 4xx with `{"error": {"code", "message"}}` naming the problem;
//! a refused body lists every problem found in it, as strings (`problems`) and with their
//! JSON paths (`details`); only infrastructure failures become 5xx. Routes ([`router`]):
//!
//! | route | module | answer |
//! |---|---|---|
//! | `POST /jobs` | [`jobs`] | 202 `{jobId, jobName, jobQueue, status, duplicate, size}` |
//! | `GET /jobs[?status=S][&next=C]` | [`jobs`] | 200 `{jobs, truncated, next}`: the stack's jobs of the last 24 hours (or those in status S), newest first |
//! | `GET /jobs/{id}` | [`jobs`] | 200 the job: status, times, reason, size, cost, log stream and console link |
//! | `DELETE /jobs/{id}` | [`jobs`] | 202 `{jobId, status, terminated}`: a single job stopped (a stage's job: cancel its run) |
//! | `POST /pipelines/{name}/runs` | [`pipelines`] | 202 `{runId, pipeline, status, duplicate}` |
//! | `GET /runs/{id}`, `GET /runs[?pipeline=NAME]`, `DELETE /runs/{id}` | [`runs`] | the run(s), newest first; cancel |
//! | `POST /runs/{id}/redrive` | [`runs`] | 202 `{runId, status, redrive, stages, duplicate}`: the run's next generation |
//! | `GET /status` | [`status`] | 200 `{stack, queues, recentFailures, openRuns}`: what the stack is doing now |

pub mod body;
pub mod call;
pub mod http;
pub mod jobs;
pub mod keys;
pub mod pipelines;
pub mod router;
pub mod runs;
pub mod sizes;
pub mod status;

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use batchline::store::Holder;
use batchline::Error;
use tracing::{info, warn};

pub use http::{error_response, ApiError};
pub use router::{route, ROUTES};

use crate::Clients;
use call::Call;
use http::Served;

/// Serves one HTTP request: a caller's mistake is answered (4xx, logged as refused), ours
/// is the invocation's error (API Gateway answers 500, the log says why).
pub async fn serve(
    request: &ApiGatewayV2httpRequest,
    clients: &Clients,
    holder: &Holder,
) -> Result<ApiGatewayV2httpResponse, Error> {
    match dispatch(request, clients, holder).await {
        Ok(answer) => Ok(answer),
        Err(Served::Caller(err)) => {
            info!(status = err.status, code = err.code, message = %err.message, "request refused");
            Ok(error_response(&err))
        }
        Err(Served::Infrastructure(err)) => {
            warn!(error = %err, "request failed");
            Err(err)
        }
    }
}

async fn dispatch(request: &ApiGatewayV2httpRequest, clients: &Clients, holder: &Holder) -> http::Answer {
    let request = http::parse_http(request)?;
    let (route, param) = route(&request.method, &request.path)?;
    let stack = clients.ports.configs.get().await?;
    let call = Call { request: &request, param, clients, holder, stack: &stack };
    (route.handler)(&call).await
}

#[cfg(test)]
mod tests;
