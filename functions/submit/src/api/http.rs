//! The wire of the API: a request read out of API Gateway's payload, answers as JSON, and the caller-facing error with every problem.

use std::collections::BTreeMap;

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::header::{HeaderValue, CONTENT_TYPE};
use base64::Engine;
use batchline::model::job_request::RequestError;
use batchline::Error;
use serde_json::{json, Value};

/// An HTTP request as API Gateway hands it over.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    /// API Gateway's id of this request (empty when it gave none).
    pub request_id: String,
    pub method: String,
    pub path: String,
    /// Lowercase names.
    pub headers: BTreeMap<String, String>,
    pub query: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// Who is calling, as API Gateway's authorizer established it ([`caller_of`]); `None`
    /// when the API has no authorizer (a local stack).
    pub caller: Option<String>,
}

/// One thing wrong with a request: where (a JSON path into the body, empty for the body
/// as a whole) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem { path: path.into(), message: message.into() }
    }

    /// A job request's problem, its message after `place` (a stage, say) when given, its
    /// path under `path_prefix` (where in the body the problem's field is) when given.
    pub fn from_request(place: Option<&str>, path_prefix: Option<&str>, problem: &RequestError) -> Self {
        let path = match (path_prefix, problem.path()) {
            (Some(prefix), "") => prefix.to_owned(),
            (Some(prefix), path) => format!("{prefix}.{path}"),
            (None, path) => path.to_owned(),
        };
        let message = match place {
            Some(place) => format!("{place}: {problem}"),
            None => problem.to_string(),
        };
        Problem { path, message }
    }
}

/// Whether every problem is the request's size (a 413 rather than a 400).
pub fn only_size(problems: &[&RequestError]) -> bool {
    problems.iter().all(|p| matches!(p, RequestError::TooLarge { .. }))
}

/// A caller-facing error: status, stable code, message — and, for a refused request, every
/// problem found in it (the message joins them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub problems: Vec<Problem>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), problems: vec![] }
    }

    /// A request refused for every problem listed: 413 when its size is the only one
    /// (`too_large`), 400 otherwise.
    pub fn refused(problems: Vec<Problem>, too_large: bool) -> Self {
        let (status, code) = if too_large { (413, "PayloadTooLarge") } else { (400, "BadRequest") };
        let message = match problems.as_slice() {
            [one] => one.message.clone(),
            many => {
                let said: Vec<&str> = many.iter().map(|p| p.message.as_str()).collect();
                format!("{} problems: {}", many.len(), said.join("; "))
            }
        };
        ApiError { status, code, message, problems }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(404, "NotFound", message)
    }

    /// 409: the same Idempotency-Key came with another request.
    pub fn key_reused() -> Self {
        ApiError::new(
            409,
            "IdempotencyConflict",
            "this Idempotency-Key was used for a different request: send this one under a new key (the batchline command makes one per command)",
        )
    }
}

impl From<Vec<RequestError>> for ApiError {
    fn from(problems: Vec<RequestError>) -> Self {
        let too_large = only_size(&problems.iter().collect::<Vec<_>>());
        ApiError::refused(problems.iter().map(|p| Problem::from_request(None, None, p)).collect(), too_large)
    }
}

/// Why a request was not served: the caller's mistake, or ours.
pub enum Served {
    Caller(ApiError),
    Infrastructure(Error),
}

impl From<ApiError> for Served {
    fn from(err: ApiError) -> Self {
        Served::Caller(err)
    }
}

impl From<Error> for Served {
    fn from(err: Error) -> Self {
        match err {
            // The table has no configuration yet: the stack is still being deployed.
            Error::NotDeployed => Served::Caller(ApiError::new(503, "NotReady", Error::NotDeployed.to_string())),
            other => Served::Infrastructure(other),
        }
    }
}

/// What a route's handler answers.
pub type Answer = Result<ApiGatewayV2httpResponse, Served>;

/// An API Gateway v2 response with a JSON body.
pub fn response(status: u16, body: &Value) -> ApiGatewayV2httpResponse {
    let mut response = ApiGatewayV2httpResponse::default();
    response.status_code = i64::from(status);
    response.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.body = Some(Body::Text(body.to_string()));
    response
}

/// `{"error": {"code", "message", "problems": [...], "details": [{"path", "message"}]}}`:
/// `problems` as strings (each naming its field), `details` the same with their paths.
pub fn error_response(err: &ApiError) -> ApiGatewayV2httpResponse {
    let mut error = json!({"code": err.code, "message": err.message});
    if !err.problems.is_empty() {
        error["problems"] = json!(err.problems.iter().map(|p| &p.message).collect::<Vec<_>>());
        error["details"] =
            json!(err.problems.iter().map(|p| json!({"path": p.path, "message": p.message})).collect::<Vec<_>>());
    }
    response(err.status, &json!({ "error": error }))
}

/// Reads the request out of the API Gateway v2 payload (base64 bodies decoded).
pub fn parse_http(event: &ApiGatewayV2httpRequest) -> Result<HttpRequest, ApiError> {
    let method = event.request_context.http.method.as_str().to_ascii_uppercase();
    let path = event.raw_path.clone().or_else(|| event.request_context.http.path.clone()).unwrap_or_else(|| "/".into());
    // An Idempotency-Key that is not visible ASCII is a mistake to say, not a header to
    // drop (which would make a keyed retry new work).
    if event.headers.get("idempotency-key").is_some_and(|v| v.to_str().is_err()) {
        return Err(ApiError::bad_request("Idempotency-Key has 1 to 255 visible ASCII characters"));
    }
    // HeaderMap names are lowercase already.
    let headers = event
        .headers
        .iter()
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
        .collect();
    let query = event.query_string_parameters.iter().map(|(name, value)| (name.to_owned(), value.to_owned())).collect();
    let raw = event.body.as_deref().unwrap_or_default();
    let body = if event.is_base64_encoded {
        base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid base64: {e}")))?
    } else {
        raw.as_bytes().to_vec()
    };
    let request_id = event.request_context.request_id.clone().unwrap_or_default();
    let caller = caller_of(event);
    Ok(HttpRequest { request_id, method, path, headers, query, body, caller })
}

/// The calling principal as the authorizer established it: an IAM caller's ARN (an assumed
/// role's, without the session name: every session of a role is the same principal, and
/// credentials refreshed mid-retry get a new session name), or a JWT's issuer and subject.
pub fn caller_of(event: &ApiGatewayV2httpRequest) -> Option<String> {
    let authorizer = event.request_context.authorizer.as_ref()?;
    if let Some(arn) = authorizer.iam.as_ref().and_then(|iam| iam.user_arn.as_deref()).filter(|a| !a.is_empty()) {
        return Some(match arn.split_once(":assumed-role/") {
            Some((account, role_and_session)) => {
                let role = role_and_session.split('/').next().unwrap_or(role_and_session);
                format!("{account}:assumed-role/{role}")
            }
            None => arn.to_owned(),
        });
    }
    let claims = &authorizer.jwt.as_ref()?.claims;
    Some(format!("jwt:{}:{}", claims.get("iss")?, claims.get("sub")?))
}

/// Epoch milliseconds as ISO 8601, for answers.
pub fn iso(millis: Option<i64>) -> Value {
    match millis {
        Some(ms) => aws_smithy_types::DateTime::from_millis(ms)
            .fmt(aws_smithy_types::date_time::Format::DateTime)
            .map(Value::String)
            .unwrap_or(Value::Null),
        None => Value::Null,
    }
}
