//! A function's settings, read from the environment variables the design fixes (the stack configuration is another thing: the document bootstrap publishes, [`crate::model::stack::StackConfig`]).
//!
//! | variable | meaning |
//! |---|---|
//! | `BATCHLINE_TABLE` | the DynamoDB table (required) |
//! | `BATCHLINE_METRIC_NAMESPACE` | CloudWatch namespace for custom metrics (default `Batchline`) |
//! | `BATCHLINE_PRICE_VCPU_HOUR` | optional (empty = unset): USD per vCPU-hour for the cost metric |
//! | `BATCHLINE_PRICE_GB_HOUR` | optional (empty = unset): USD per GB-hour of memory for the cost metric |
//! | `BATCHLINE_PRICE_SPOT_VCPU_HOUR`, `BATCHLINE_PRICE_SPOT_GB_HOUR` | optional (empty = unset): the same for Fargate Spot |
//!
//! A missing or malformed variable fails at start-up with an error naming it, instead of
//! failing every invocation later.

pub const TABLE_VAR: &str = "BATCHLINE_TABLE";
pub const METRIC_NAMESPACE_VAR: &str = "BATCHLINE_METRIC_NAMESPACE";
pub const PRICE_VCPU_HOUR_VAR: &str = "BATCHLINE_PRICE_VCPU_HOUR";
pub const PRICE_GB_HOUR_VAR: &str = "BATCHLINE_PRICE_GB_HOUR";
pub const PRICE_SPOT_VCPU_HOUR_VAR: &str = "BATCHLINE_PRICE_SPOT_VCPU_HOUR";
pub const PRICE_SPOT_GB_HOUR_VAR: &str = "BATCHLINE_PRICE_SPOT_GB_HOUR";

/// Every variable the functions read, for checks that the template sets exactly these.
pub const ALL_VARS: [&str; 6] = [
    TABLE_VAR,
    METRIC_NAMESPACE_VAR,
    PRICE_VCPU_HOUR_VAR,
    PRICE_GB_HOUR_VAR,
    PRICE_SPOT_VCPU_HOUR_VAR,
    PRICE_SPOT_GB_HOUR_VAR,
];

pub const DEFAULT_METRIC_NAMESPACE: &str = "Batchline";

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The DynamoDB table holding configuration, claims, event marks and runs.
    pub table_name: String,
    /// The CloudWatch namespace of every custom metric.
    pub metric_namespace: String,
    /// Fargate prices that replace the built-in rates, where set.
    pub price_overrides: PriceOverrides,
}

/// Prices (USD) for the cost metric; `None` keeps the built-in rate.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PriceOverrides {
    /// Fargate on-demand, both architectures.
    pub vcpu_hour: Option<f64>,
    pub gb_hour: Option<f64>,
    /// Fargate Spot (x86_64 only).
    pub spot_vcpu_hour: Option<f64>,
    pub spot_gb_hour: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("environment variable {name} is not set")]
    Missing { name: &'static str },
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Malformed { name: &'static str, value: String, reason: String },
}

impl Settings {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup`, so tests need not touch the process
    /// environment (which is shared by tests running in parallel).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let table_name = lookup(TABLE_VAR)
            .filter(|value| !value.trim().is_empty())
            .ok_or(SettingsError::Missing { name: TABLE_VAR })?;
        let metric_namespace = match lookup(METRIC_NAMESPACE_VAR) {
            None => DEFAULT_METRIC_NAMESPACE.to_owned(),
            Some(value) => validate_namespace(value)?,
        };
        let price_overrides = PriceOverrides {
            vcpu_hour: parse_price(PRICE_VCPU_HOUR_VAR, lookup(PRICE_VCPU_HOUR_VAR))?,
            gb_hour: parse_price(PRICE_GB_HOUR_VAR, lookup(PRICE_GB_HOUR_VAR))?,
            spot_vcpu_hour: parse_price(PRICE_SPOT_VCPU_HOUR_VAR, lookup(PRICE_SPOT_VCPU_HOUR_VAR))?,
            spot_gb_hour: parse_price(PRICE_SPOT_GB_HOUR_VAR, lookup(PRICE_SPOT_GB_HOUR_VAR))?,
        };
        Ok(Settings { table_name, metric_namespace, price_overrides })
    }
}

/// CloudWatch namespaces: 1–255 characters, and `AWS/` is reserved for AWS's own.
fn validate_namespace(value: String) -> Result<String, SettingsError> {
    let malformed = |reason: &str| SettingsError::Malformed {
        name: METRIC_NAMESPACE_VAR,
        value: value.clone(),
        reason: reason.to_owned(),
    };
    if value.is_empty() || value.len() > 255 {
        return Err(malformed("a namespace has 1 to 255 characters"));
    }
    if value.starts_with("AWS/") {
        return Err(malformed("namespaces starting with AWS/ are reserved for AWS"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || ".-_/#: ".contains(c);
    if !value.chars().all(allowed) {
        return Err(malformed("use letters, digits and . - _ / # : or space"));
    }
    Ok(value)
}

/// Empty means unset: the template passes an empty parameter when no override is wanted.
fn parse_price(name: &'static str, value: Option<String>) -> Result<Option<f64>, SettingsError> {
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else { return Ok(None) };
    match value.trim().parse::<f64>() {
        Ok(price) if price.is_finite() && price >= 0.0 => Ok(Some(price)),
        _ => Err(SettingsError::Malformed {
            name,
            value,
            reason: "expected a non-negative number of US dollars".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn reads_the_table_and_defaults_the_namespace() {
        let settings = Settings::from_lookup(lookup(&[(TABLE_VAR, "batchline")])).unwrap();
        assert_eq!(settings.table_name, "batchline");
        assert_eq!(settings.metric_namespace, "Batchline");
        assert_eq!(settings.price_overrides, PriceOverrides::default());
    }

    #[test]
    fn a_missing_table_is_an_error_naming_the_variable() {
        let err = Settings::from_lookup(lookup(&[])).unwrap_err();
        assert_eq!(err, SettingsError::Missing { name: TABLE_VAR });
        assert!(err.to_string().contains("BATCHLINE_TABLE"));
    }

    #[test]
    fn price_overrides_are_parsed_and_malformed_ones_named() {
        let settings = Settings::from_lookup(lookup(&[
            (TABLE_VAR, "t"),
            (PRICE_VCPU_HOUR_VAR, "0.04048"),
            (PRICE_GB_HOUR_VAR, "0.004445"),
        ]))
        .unwrap();
        assert_eq!(settings.price_overrides.vcpu_hour, Some(0.04048));
        assert_eq!(settings.price_overrides.gb_hour, Some(0.004445));

        let err = Settings::from_lookup(lookup(&[(TABLE_VAR, "t"), (PRICE_GB_HOUR_VAR, "cheap")])).unwrap_err();
        assert!(err.to_string().contains("BATCHLINE_PRICE_GB_HOUR"), "{err}");
        let unset = Settings::from_lookup(lookup(&[(TABLE_VAR, "t"), (PRICE_VCPU_HOUR_VAR, "")])).unwrap();
        assert_eq!(unset.price_overrides.vcpu_hour, None, "empty is unset");
        let err = Settings::from_lookup(lookup(&[(TABLE_VAR, "t"), (PRICE_VCPU_HOUR_VAR, "-1")])).unwrap_err();
        assert!(err.to_string().contains("BATCHLINE_PRICE_VCPU_HOUR"), "{err}");
    }

    #[test]
    fn reserved_or_malformed_namespaces_are_refused() {
        for bad in ["", "AWS/Batch", "bad*name"] {
            let err = Settings::from_lookup(lookup(&[(TABLE_VAR, "t"), (METRIC_NAMESPACE_VAR, bad)])).unwrap_err();
            assert!(err.to_string().contains(METRIC_NAMESPACE_VAR), "{bad}: {err}");
        }
        let config =
            Settings::from_lookup(lookup(&[(TABLE_VAR, "t"), (METRIC_NAMESPACE_VAR, "Team/Batchline")])).unwrap();
        assert_eq!(config.metric_namespace, "Team/Batchline");
    }
}
