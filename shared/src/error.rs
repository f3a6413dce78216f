//! The library's error, one variant per cause, each known to be retryable or final, mapped to Lambda diagnostics.
//!
//! Callers decide on the variant (or [`Error::is_retryable`]), never on a message. An AWS
//! SDK error's `Display` says only "service error"; [`Error::aws`] keeps the operation,
//! the AWS error code (e.g. `ThrottlingException`) and the message, so logs and the Lambda
//! error report say what actually went wrong.

use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use lambda_runtime::Diagnostic;

use crate::settings::SettingsError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An environment variable is missing or malformed: the function cannot start.
    #[error("configuration: {0}")]
    Settings(#[from] SettingsError),

    /// The table holds no stack configuration yet: bootstrap has not run (the stack is
    /// still being deployed).
    #[error("the stack is not deployed yet: the table holds no stack configuration (has bootstrap run?)")]
    NotDeployed,

    /// The payload is not an event this function handles, or is malformed.
    #[error("invalid event: {0}")]
    InvalidEvent(String),

    /// An item in the table cannot be read (or written) as its kind.
    #[error("stored item {item}: {reason}")]
    Stored { item: String, reason: String },

    /// A pipeline stage's job cannot be built from the current configuration (a deploy
    /// removed its job definition or queue).
    #[error("stage {stage} of run {run_id} cannot be submitted: {reason}")]
    Unsubmittable { run_id: String, stage: String, reason: String },

    /// Another invocation holds the work (a claim in flight): retry later.
    #[error("{0}: another invocation has it under way; retry later")]
    InFlight(String),

    /// An idempotency key was used before for a different request.
    #[error("idempotency key {0:?} was used before for a different request")]
    IdempotencyConflict(String),

    /// A claim this invocation held was taken over before it could record its work
    /// (possible only if clocks disagree by more than the take-over margin).
    #[error("the claim of {0:?} was taken over while this invocation held it")]
    ClaimLost(String),

    /// A run stage's submission was withdrawn: the run gave the attempt up (cancelled or
    /// failed) before a job was recorded, so it is never to be submitted.
    #[error("the submission of {0:?} was withdrawn: its run gave the attempt up")]
    Withdrawn(String),

    /// A conditional write kept losing to other writers.
    #[error("{0} kept changing under us")]
    Contention(String),

    /// CloudFormation's ResponseURL would not take bootstrap's answer.
    #[error("CloudFormation was not answered: {0}")]
    Unanswered(String),

    /// Something did not happen in the time there was for it.
    #[error("timed out: {0}")]
    Timeout(String),

    /// An AWS call failed; `code` is AWS's error code when the service sent one.
    #[error("{operation} failed: {code}: {message}")]
    Aws { operation: &'static str, code: String, message: String },
}

/// Codes AWS uses when a caller is over a rate limit; worth retrying with backoff.
const THROTTLING_CODES: [&str; 6] = [
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
    "SlowDown",
];

/// Codes with which AWS refuses the request itself: the same request fails again.
const CALLER_ERROR_CODES: [&str; 3] = ["ClientException", "ValidationException", "AccessDeniedException"];

impl Error {
    /// Wraps an AWS SDK error, keeping its code and message.
    pub fn aws<E>(operation: &'static str, err: E) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error,
    {
        let code = err.code().unwrap_or("Unknown").to_owned();
        let message = match err.message() {
            Some(message) => message.to_owned(),
            // Not a service reply (timeout, connection refused, ...): the whole chain says why.
            None => DisplayErrorContext(&err).to_string(),
        };
        Error::Aws { operation, code, message }
    }

    /// The AWS error code, for errors that came from AWS.
    pub fn aws_code(&self) -> Option<&str> {
        match self {
            Error::Aws { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the error is AWS saying "slow down".
    pub fn is_throttling(&self) -> bool {
        self.aws_code().is_some_and(|code| THROTTLING_CODES.contains(&code))
    }

    /// Whether trying the same work again later can succeed: false for input that will
    /// never be handled (it belongs in a dead-letter queue or a 4xx answer).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Settings(_)
            | Error::InvalidEvent(_)
            | Error::Stored { .. }
            | Error::Unsubmittable { .. }
            | Error::IdempotencyConflict(_)
            | Error::ClaimLost(_)
            | Error::Withdrawn(_) => false,
            Error::NotDeployed
            | Error::InFlight(_)
            | Error::Contention(_)
            | Error::Unanswered(_)
            | Error::Timeout(_) => true,
            Error::Aws { code, .. } => !CALLER_ERROR_CODES.contains(&code.as_str()),
        }
    }

    /// A stable name for the kind of error, as CloudWatch shows it in `errorType`.
    pub fn error_type(&self) -> &'static str {
        match self {
            // (The error type keeps its first name: alarms and log queries may match it.)
            Error::Settings(_) => "Batchline.ConfigError",
            Error::NotDeployed => "Batchline.NotDeployed",
            Error::InvalidEvent(_) => "Batchline.InvalidEvent",
            Error::Stored { .. } => "Batchline.StoredItem",
            Error::Unsubmittable { .. } => "Batchline.Unsubmittable",
            Error::InFlight(_) => "Batchline.InFlight",
            Error::IdempotencyConflict(_) => "Batchline.IdempotencyConflict",
            Error::ClaimLost(_) => "Batchline.ClaimLost",
            Error::Withdrawn(_) => "Batchline.Withdrawn",
            Error::Contention(_) => "Batchline.Contention",
            Error::Unanswered(_) => "Batchline.Unanswered",
            Error::Timeout(_) => "Batchline.Timeout",
            Error::Aws { .. } => "Batchline.AwsError",
        }
    }
}

/// The outcome of a DynamoDB conditional write: `Ok(true)` written, `Ok(false)` its
/// condition did not hold (someone else got there first), `Err` anything else.
pub fn conditional_write<T, E>(operation: &'static str, result: Result<T, E>) -> Result<bool, Error>
where
    E: ProvideErrorMetadata + std::error::Error,
{
    match result {
        Ok(_) => Ok(true),
        Err(err) => {
            let err = Error::aws(operation, err);
            if err.aws_code() == Some("ConditionalCheckFailedException") {
                Ok(false)
            } else {
                Err(err)
            }
        }
    }
}

impl From<Error> for Diagnostic {
    fn from(err: Error) -> Self {
        Diagnostic { error_type: err.error_type().to_owned(), error_message: err.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_types::error::ErrorMetadata;

    #[derive(Debug)]
    struct FakeServiceError(ErrorMetadata);

    impl std::fmt::Display for FakeServiceError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("service error")
        }
    }
    impl std::error::Error for FakeServiceError {}
    impl ProvideErrorMetadata for FakeServiceError {
        fn meta(&self) -> &ErrorMetadata {
            &self.0
        }
    }

    #[test]
    fn aws_errors_keep_their_code_and_message() {
        let meta = ErrorMetadata::builder().code("ThrottlingException").message("Rate exceeded").build();
        let err = Error::aws("SubmitJob", FakeServiceError(meta));
        assert_eq!(err.to_string(), "SubmitJob failed: ThrottlingException: Rate exceeded");
        assert!(err.is_throttling());

        let diagnostic = Diagnostic::from(err);
        assert_eq!(diagnostic.error_type, "Batchline.AwsError");
        assert!(diagnostic.error_message.contains("ThrottlingException"));
    }

    #[test]
    fn errors_without_service_metadata_explain_themselves() {
        let err = Error::aws("PutItem", FakeServiceError(ErrorMetadata::builder().build()));
        assert_eq!(err.aws_code(), Some("Unknown"));
        assert!(!err.is_throttling());
        assert!(err.to_string().contains("service error"));
    }

    #[test]
    fn each_cause_says_whether_a_retry_can_help() {
        assert!(Error::NotDeployed.is_retryable());
        assert!(Error::InFlight("x".into()).is_retryable());
        assert!(Error::Contention("run r".into()).is_retryable());
        assert!(!Error::InvalidEvent("x".into()).is_retryable());
        let unsubmittable = Error::Unsubmittable { run_id: "r".into(), stage: "s".into(), reason: "gone".into() };
        assert!(!unsubmittable.is_retryable());
        assert_eq!(Diagnostic::from(unsubmittable).error_type, "Batchline.Unsubmittable");
        let refused = Error::Aws { operation: "SubmitJob", code: "ClientException".into(), message: "no".into() };
        assert!(!refused.is_retryable());
        let throttled = Error::Aws { operation: "SubmitJob", code: "ThrottlingException".into(), message: "".into() };
        assert!(throttled.is_retryable());
    }

    #[test]
    fn configuration_errors_become_config_diagnostics() {
        let diagnostic = Diagnostic::from(Error::from(SettingsError::Missing { name: "BATCHLINE_TABLE" }));
        assert_eq!(diagnostic.error_type, "Batchline.ConfigError");
        assert!(diagnostic.error_message.contains("BATCHLINE_TABLE"));
    }
}
