//! The CloudFormation custom resource protocol: the request bootstrap receives and the answer it PUTs to the ResponseURL.

use std::time::Duration;

use aws_smithy_http_client::{tls, Connector};
use aws_smithy_runtime_api::client::http::{HttpConnector, SharedHttpConnector};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::{info, warn};

/// A custom resource request. Read leniently: only what bootstrap needs, and every field
/// needed to answer is read even when others are missing, so a malformed request can
/// still be answered.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Request {
    #[serde(default)]
    pub request_type: String,
    #[serde(rename = "ResponseURL")]
    pub response_url: String,
    #[serde(default)]
    pub stack_id: String,
    #[serde(default)]
    pub request_id: String,
    #[serde(default)]
    pub logical_resource_id: String,
    #[serde(default)]
    pub physical_resource_id: Option<String>,
    #[serde(default)]
    pub resource_type: Option<String>,
    #[serde(default)]
    pub resource_properties: Value,
    #[serde(default)]
    pub old_resource_properties: Option<Value>,
}

impl Request {
    /// Where the stack is: its name (see [`Request::stack_name`]), `region`, and the account
    /// its StackId names.
    pub fn place<'a>(&'a self, name: &'a str, region: &'a str) -> crate::declaration::StackPlace<'a> {
        let account = self.stack_id.split(':').nth(4).unwrap_or_default();
        crate::declaration::StackPlace { name, region, account }
    }

    /// The CloudFormation stack's name, from its StackId
    /// (`arn:aws:cloudformation:<region>:<account>:stack/<name>/<guid>`). The template's
    /// policies let bootstrap touch only what carries this name, so the environment is
    /// built under it. `None` when the StackId is no stack's ARN.
    pub fn stack_name(&self) -> Option<&str> {
        let resource = self.stack_id.split(':').nth(5)?;
        let mut parts = resource.split('/');
        match (parts.next(), parts.next()) {
            (Some("stack"), Some(name)) if !name.is_empty() => Some(name),
            _ => None,
        }
    }

    /// Reads a request: as `aws_lambda_events`' typed request when it is one, else
    /// leniently, so that a malformed request with a ResponseURL can still be answered
    /// (FAILED, with what is wrong). `None` when there is no one to answer.
    pub fn from_payload(payload: &Value) -> Option<Request> {
        use aws_lambda_events::cloudformation::CloudFormationCustomResourceRequest as Typed;
        match serde_json::from_value::<Typed>(payload.clone()) {
            Ok(Typed::Create(r)) => Some(Request {
                request_type: "Create".into(),
                response_url: r.response_url,
                stack_id: r.stack_id,
                request_id: r.request_id,
                logical_resource_id: r.logical_resource_id,
                physical_resource_id: None,
                resource_type: Some(r.resource_type),
                resource_properties: r.resource_properties,
                old_resource_properties: None,
            }),
            Ok(Typed::Update(r)) => Some(Request {
                request_type: "Update".into(),
                response_url: r.response_url,
                stack_id: r.stack_id,
                request_id: r.request_id,
                logical_resource_id: r.logical_resource_id,
                physical_resource_id: Some(r.physical_resource_id),
                resource_type: Some(r.resource_type),
                resource_properties: r.resource_properties,
                old_resource_properties: Some(r.old_resource_properties),
            }),
            Ok(Typed::Delete(r)) => Some(Request {
                request_type: "Delete".into(),
                response_url: r.response_url,
                stack_id: r.stack_id,
                request_id: r.request_id,
                logical_resource_id: r.logical_resource_id,
                physical_resource_id: Some(r.physical_resource_id),
                resource_type: Some(r.resource_type),
                resource_properties: r.resource_properties,
                old_resource_properties: None,
            }),
            Ok(_) => serde_json::from_value(payload.clone()).ok(),
            Err(_) => serde_json::from_value(payload.clone()).ok(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Success,
    Failed,
}

/// The answer CloudFormation waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Response {
    pub status: Status,
    pub reason: String,
    pub physical_resource_id: String,
    pub stack_id: String,
    pub request_id: String,
    pub logical_resource_id: String,
    pub no_echo: bool,
    pub data: Map<String, Value>,
}

/// CloudFormation refuses response bodies over 4,096 bytes; the reason is what gives.
pub const MAX_BODY_BYTES: usize = 4096;

impl Response {
    pub fn new(
        request: &Request,
        status: Status,
        reason: impl Into<String>,
        physical_resource_id: String,
        data: Map<String, Value>,
    ) -> Self {
        let mut response = Response {
            status,
            reason: reason.into(),
            physical_resource_id,
            stack_id: request.stack_id.clone(),
            request_id: request.request_id.clone(),
            logical_resource_id: request.logical_resource_id.clone(),
            no_echo: false,
            data,
        };
        response.fit();
        response
    }

    /// Shortens the reason until the body fits CloudFormation's limit.
    fn fit(&mut self) {
        while serde_json::to_vec(self).map(|b| b.len()).unwrap_or(0) > MAX_BODY_BYTES && self.reason.len() > 40 {
            let keep = self.reason.len() * 3 / 4;
            let cut = (0..=keep).rev().find(|i| self.reason.is_char_boundary(*i)).unwrap_or(0);
            self.reason.truncate(cut);
            self.reason.push_str(" [...]");
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("could not deliver the answer to CloudFormation after {attempts} attempts: {last}")]
pub struct SendError {
    pub attempts: u32,
    pub last: String,
}

/// The HTTP connector the answer is PUT with: the AWS SDK's own (hyper 1, rustls with
/// aws-lc), so the function carries one HTTP/TLS stack and is built with the same features
/// as the other functions (a second client would make every deployment build compile the
/// SDK twice).
pub fn answer_connector() -> SharedHttpConnector {
    SharedHttpConnector::new(
        Connector::builder().tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc)).build(),
    )
}

/// PUTs the answer to the pre-signed ResponseURL: an empty content type (the URL is signed
/// without one), retried with backoff on connection errors and 5xx answers.
pub async fn send(http: &SharedHttpConnector, url: &str, response: &Response, attempts: u32) -> Result<(), SendError> {
    let body = serde_json::to_vec(response).map_err(|e| SendError { attempts: 0, last: e.to_string() })?;
    let mut last = String::new();
    for attempt in 1..=attempts {
        match put_once(http, url, &body).await {
            Ok(status) if status.is_success() => {
                info!(status = ?response.status, attempt, "answered CloudFormation");
                return Ok(());
            }
            Ok(status) if status.is_client_error() => {
                // A 4xx will not change on retry (expired or malformed URL).
                return Err(SendError { attempts: attempt, last: format!("HTTP {}", status.as_u16()) });
            }
            Ok(status) => last = format!("HTTP {}", status.as_u16()),
            Err(err) => last = err,
        }
        warn!(attempt, error = %last, "answering CloudFormation failed; retrying");
        if attempt < attempts {
            tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt - 1))).await;
        }
    }
    Err(SendError { attempts, last })
}

/// One PUT of the answer, given 10 seconds; the status, or why there is none.
async fn put_once(http: &SharedHttpConnector, url: &str, body: &[u8]) -> Result<StatusCode, String> {
    let mut request = HttpRequest::new(SdkBody::from(body.to_vec()));
    request.set_method("PUT").map_err(|e| e.to_string())?;
    request.set_uri(url).map_err(|e| format!("invalid ResponseURL: {e}"))?;
    request.headers_mut().insert("content-type", "");
    request.headers_mut().insert("content-length", body.len().to_string());
    match tokio::time::timeout(Duration::from_secs(10), http.call(request)).await {
        Ok(Ok(reply)) => Ok(reply.status()),
        Ok(Err(err)) => Err(aws_smithy_types::error::display::DisplayErrorContext(err).to_string()),
        Err(_) => Err("no answer within 10 s".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_stack_id(stack_id: &str) -> Request {
        let payload = serde_json::json!({"RequestType": "Create", "ResponseURL": "http://x", "StackId": stack_id});
        Request::from_payload(&payload).unwrap()
    }

    #[test]
    fn the_stack_name_is_read_from_the_stack_id_and_nothing_else_passes_for_one() {
        let arn =
            "arn:aws:cloudformation:eu-west-1:123456789012:stack/orders-prod/6f1e4c10-aaaa-bbbb-cccc-000000000000";
        assert_eq!(with_stack_id(arn).stack_name(), Some("orders-prod"));
        for not_a_stack in
            ["", "s", "arn:aws:cloudformation:eu-west-1:123456789012:stack//x", "arn:aws:s3:::bucket/key"]
        {
            assert_eq!(with_stack_id(not_a_stack).stack_name(), None, "{not_a_stack:?}");
        }
    }
}
