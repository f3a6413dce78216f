//! The API client: where the API is, SigV4-signed requests with the standard AWS credential chain, idempotency keys kept across retries, errors as one line.

use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use serde_json::Value;

/// The variable that names the API when neither `--endpoint` nor `--stack` does.
pub const API_URL_VAR: &str = "BATCHLINE_API_URL";
/// Attempts of one request (the first and two retries) when the API or the network fails.
const ATTEMPTS: u32 = 3;

/// What went wrong, as the command line shows it: one line, and the exit status.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub message: String,
    /// 1 for an error; 2 for a usage error (a value written wrong), as clap's.
    pub exit: i32,
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        Failure { message: message.into(), exit: 1 }
    }

    /// A value of an option written wrong: a usage error (exit status 2), as clap's own.
    pub fn usage(message: impl Into<String>) -> Self {
        Failure { message: message.into(), exit: 2 }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Finds the API: `--endpoint-url`, else the stack's `ApiUrl` output (`--stack`), else
/// `BATCHLINE_API_URL`; a URL without `http://` or `https://` is refused saying so.
pub async fn find_api(endpoint: Option<&str>, stack: Option<&str>, sdk: &SdkConfig) -> Result<String, Failure> {
    if let Some(url) = endpoint {
        return with_scheme(url, "--endpoint-url");
    }
    if let Some(stack) = stack {
        let cloudformation = aws_sdk_cloudformation::Client::new(sdk);
        let described = cloudformation.describe_stacks().stack_name(stack).send().await.map_err(|e| {
            Failure::new(format!("stack {stack}: {}", aws_sdk_cloudformation::error::DisplayErrorContext(e)))
        })?;
        let url = described
            .stacks()
            .first()
            .and_then(|s| s.outputs().iter().find(|o| o.output_key() == Some("ApiUrl")))
            .and_then(|o| o.output_value())
            .ok_or_else(|| Failure::new(format!("stack {stack} has no ApiUrl output: is it a Batchline stack?")))?;
        return with_scheme(url, &format!("stack {stack}'s ApiUrl"));
    }
    match std::env::var(API_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => with_scheme(url.trim(), API_URL_VAR),
        _ => Err(Failure::new(format!("where is the API? give --endpoint-url URL, --stack NAME or set {API_URL_VAR}"))),
    }
}

/// `url` without a trailing slash, if it names its scheme; else the one line that says
/// what to write (`from`: where the URL came from).
pub fn with_scheme(url: &str, from: &str) -> Result<String, Failure> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(url.trim_end_matches('/').to_owned());
    }
    Err(Failure::new(format!(
        "{from} {url:?} has no scheme: write http://{url} (the local stack) or https://{url} (API Gateway)"
    )))
}

/// The causes under an error, innermost last, as one string.
fn causes(err: &dyn std::error::Error) -> String {
    let mut said = Vec::new();
    let mut source = err.source();
    while let Some(cause) = source {
        said.push(cause.to_string());
        source = cause.source();
    }
    said.join(": ")
}

/// The one line for a request that got no answer other than a timeout: what happened and
/// what to do.
pub fn connection_failure(method: &str, url: &str, err: &reqwest::Error) -> Failure {
    let cause = causes(err);
    let lower = cause.to_lowercase();
    if url.starts_with("https://") && (lower.contains("invalidcontenttype") || lower.contains("corrupt message")) {
        let plain = url.replacen("https://", "http://", 1);
        return Failure::new(format!("{url} answered plain HTTP, not TLS: use {plain}"));
    }
    if lower.contains("certificate") {
        return Failure::new(format!(
            "{method} {url}: TLS refused the server's certificate ({cause}): is the host right?"
        ));
    }
    if lower.contains("connection refused") {
        return Failure::new(format!(
            "{method} {url}: nothing listens there (connection refused): is the URL right, and the stack served (scripts/local-stack locally)?"
        ));
    }
    if lower.contains("dns") || lower.contains("lookup") || lower.contains("name or service not known") {
        return Failure::new(format!("{method} {url}: its host cannot be found ({cause}): is the URL right?"));
    }
    let cause = if cause.is_empty() { err.to_string() } else { cause };
    Failure::new(format!("{method} {url}: no answer ({cause})"))
}

/// Where credentials were looked for, for the line that says none were found.
pub fn credentials_missing(profile: Option<&str>, cause: &str) -> Failure {
    let profile = match (profile, std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty())) {
        (Some(flag), _) => format!("--profile {flag}"),
        (None, Some(variable)) => format!("AWS_PROFILE={variable}"),
        (None, None) => "the default profile (AWS_PROFILE unset)".to_owned(),
    };
    Failure::new(format!(
        "no credentials: looked at {profile}, the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), \
         ~/.aws/credentials and ~/.aws/config ({cause}); run `aws configure`, or export AWS_ACCESS_KEY_ID \
         and AWS_SECRET_ACCESS_KEY (locally any values do, e.g. testing)"
    ))
}

/// The one line for a CloudWatch Logs call that failed while reading a job's log.
pub fn logs_error<E>(group: &str, stream: &str, err: &aws_sdk_cloudwatchlogs::error::SdkError<E>) -> String
where
    E: aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_cloudwatchlogs::error::SdkError;
    let at = format!("reading the log {group} {stream} from CloudWatch Logs");
    let local = "; trying Batchline locally? export the AWS_ENDPOINT_URL scripts/local-stack prints";
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().unwrap_or("an error");
            let hint = match code {
                "UnrecognizedClientException" | "InvalidClientTokenId" | "InvalidSignatureException" => local,
                "AccessDeniedException" => "; your IAM identity may not read this log group",
                _ => "",
            };
            format!("{at}: {code}: {}{hint}", e.message().unwrap_or_default())
        }
        SdkError::TimeoutError(_) => format!("{at}: no answer in time (--cli-connect-timeout, --cli-read-timeout)"),
        SdkError::DispatchFailure(failure) => {
            let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "AWS".to_owned());
            let cause = failure.as_connector_error().map(|c| format!("{c}: {}", causes(c))).unwrap_or_default();
            format!("{at}: no connection to {endpoint} ({cause}){local}")
        }
        other => format!("{at}: {other}{local}"),
    }
}

/// How long a request may take: to connect, and then for the answer (`None`: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Option<Duration>,
    pub read: Option<Duration>,
}

impl Timeouts {
    /// From `--cli-connect-timeout` and `--cli-read-timeout` (seconds, 0 for no limit, as
    /// the AWS CLI reads them).
    pub fn from_seconds(connect: u64, read: u64) -> Self {
        let limit = |seconds: u64| (seconds > 0).then(|| Duration::from_secs(seconds));
        Timeouts { connect: limit(connect), read: limit(read) }
    }
}

/// Calls the API, signing every request for `execute-api`.
pub struct Api {
    base: String,
    http: reqwest::Client,
    sdk: SdkConfig,
    timeouts: Timeouts,
    /// `--profile`, to name where credentials were looked for when none are found.
    pub profile: Option<String>,
}

impl Api {
    pub fn new(base: String, sdk: SdkConfig, timeouts: Timeouts) -> Result<Self, Failure> {
        let mut http = reqwest::Client::builder();
        if let Some(connect) = timeouts.connect {
            http = http.connect_timeout(connect);
        }
        if let Some(read) = timeouts.read {
            http = http.read_timeout(read);
        }
        let http = http.build().map_err(|e| Failure::new(format!("the HTTP client cannot start: {e}")))?;
        Ok(Api { base, http, sdk, timeouts, profile: None })
    }

    /// The one line that says why a request got no answer, and what to do.
    fn unanswered(&self, method: &str, url: &str, err: &reqwest::Error) -> Failure {
        let seconds = |limit: Option<Duration>| limit.map_or(0, |d| d.as_secs());
        if err.is_connect() && err.is_timeout() {
            let limit = seconds(self.timeouts.connect);
            return Failure::new(format!(
                "{method} {url}: no connection within {limit} s (--cli-connect-timeout): is the endpoint right and reachable?"
            ));
        }
        if err.is_timeout() {
            let limit = seconds(self.timeouts.read);
            return Failure::new(format!(
                "{method} {url}: no answer within {limit} s (--cli-read-timeout): is this Batchline's API? raise the limit if it is just slow"
            ));
        }
        connection_failure(method, url, err)
    }

    pub async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call("GET", path, None, None).await
    }

    /// A request that changes something: it carries a fresh `Idempotency-Key`, the same on
    /// every retry, so a retried request never does the work twice.
    pub async fn change(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Failure> {
        let key = uuid::Uuid::new_v4().to_string();
        self.call(method, path, body, Some(&key)).await
    }

    async fn call(&self, method: &str, path: &str, body: Option<&Value>, key: Option<&str>) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.base);
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut last = Failure::new("no attempt made");
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(Duration::from_millis(300 * u64::from(attempt))).await;
            }
            let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
            if let Some(key) = key {
                headers.push(("idempotency-key".to_owned(), key.to_owned()));
            }
            headers.extend(self.signature(method, &url, &headers, body.as_bytes()).await?);
            let mut request = self.http.request(method.parse().map_err(|_| Failure::new("bad method"))?, &url);
            for (name, value) in &headers {
                request = request.header(name, value);
            }
            let reply = match request.body(body.clone()).send().await {
                Ok(reply) => reply,
                // A timeout is said at once: retrying would wait as long again.
                Err(err) if err.is_timeout() => return Err(self.unanswered(method, &url, &err)),
                Err(err) => {
                    last = self.unanswered(method, &url, &err);
                    continue;
                }
            };
            let status = reply.status().as_u16();
            let text = reply.text().await.unwrap_or_default();
            let document: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if status < 400 {
                return Ok(document);
            }
            last = Failure::new(api_error(status, &document, &text));
            // A caller's mistake will not mend by itself; a server's trouble may.
            if status < 500 {
                return Err(last);
            }
        }
        Err(last)
    }

    /// The SigV4 headers for a request to API Gateway (`execute-api`), from the standard
    /// credential chain (environment, profile, SSO, instance role...).
    async fn signature(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Vec<(String, String)>, Failure> {
        let profile = self.profile.as_deref();
        let provider =
            self.sdk.credentials_provider().ok_or_else(|| credentials_missing(profile, "no credential provider"))?;
        let credentials =
            provider.provide_credentials().await.map_err(|e| credentials_missing(profile, &e.to_string()))?;
        let identity: Identity = credentials.into();
        let region = self.sdk.region().map(|r| r.to_string()).unwrap_or_else(|| "us-east-1".to_owned());
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&region)
            .name("execute-api")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| Failure::new(format!("signing: {e}")))?
            .into();
        let signable = SignableRequest::new(
            method,
            url,
            headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            SignableBody::Bytes(body),
        )
        .map_err(|e| Failure::new(format!("signing: {e}")))?;
        let (instructions, _) =
            sign(signable, &params).map_err(|e| Failure::new(format!("signing: {e}")))?.into_parts();
        Ok(instructions.headers().map(|(n, v)| (n.to_owned(), v.to_owned())).collect())
    }
}

/// `HTTP 404 NotFound: no run x`: the API's error in one line — or, for a request refused
/// for several problems, a line saying how many and then each problem on its own line.
pub fn api_error(status: u16, document: &Value, text: &str) -> String {
    let error = &document["error"];
    let problems: Vec<&str> =
        error["problems"].as_array().map(|p| p.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    match (error["code"].as_str(), error["message"].as_str()) {
        (Some(code), Some(_)) if problems.len() > 1 => {
            let lines: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
            format!("HTTP {status} {code}: {} problems:\n{}", problems.len(), lines.join("\n"))
        }
        (Some(code), Some(message)) => format!("HTTP {status} {code}: {message}"),
        _ if text.trim().is_empty() => format!("HTTP {status}"),
        _ => format!("HTTP {status}: {}", text.trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_api_error_is_one_line_with_its_status_and_code() {
        let document = json!({"error": {"code": "NotFound", "message": "no run r1"}});
        assert_eq!(api_error(404, &document, ""), "HTTP 404 NotFound: no run r1");
        assert_eq!(api_error(502, &Value::Null, "Bad Gateway"), "HTTP 502: Bad Gateway");
        assert_eq!(api_error(503, &Value::Null, ""), "HTTP 503");
    }

    #[test]
    fn a_refusal_for_several_problems_puts_each_on_its_own_line() {
        let document = json!({"error": {"code": "BadRequest", "message": "2 problems: vcpu: x; colour: unknown field",
                                        "problems": ["vcpu: x", "colour: unknown field"]}});
        assert_eq!(
            api_error(400, &document, ""),
            "HTTP 400 BadRequest: 2 problems:\n  - vcpu: x\n  - colour: unknown field"
        );
    }
}
