//! Logging set-up shared by every function binary.

/// Installs lambda_runtime's tracing subscriber once, at start-up.
///
/// It honours `AWS_LAMBDA_LOG_FORMAT=JSON` (what the template's `LoggingConfig: {LogFormat:
/// JSON}` sets) and `AWS_LAMBDA_LOG_LEVEL`, so log lines carry structured fields in
/// CloudWatch Logs and plain text when run by hand.
pub fn init() {
    lambda_runtime::tracing::init_default_subscriber();
}
