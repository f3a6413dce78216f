//! Reading CloudFormation's strings (numbers, booleans and lists arrive as text, or natively from other tools), and the keys every section names its entries by.

use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::Value;

/// An entry's key (`default`, `spot`, ...): stages and triggers name queues and job
/// definitions by it, and physical names are built from it.
pub(super) fn valid_key(key: &str) -> bool {
    (1..=40).contains(&key.len()) && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub(super) fn de_string_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Form::deserialize(deserializer).map_err(|_| de::Error::custom("expected a list of strings"))? {
        Form::List(items) => items,
        Form::Text(text) => text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
    })
}

pub(super) fn de_opt_string_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<String>>, D::Error> {
    de_string_list(deserializer).map(Some)
}

/// A number or a string holding one.
pub(super) fn de_opt_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let value = Value::deserialize(deserializer)?;
    match &value {
        Value::Number(n) => n.as_u64().map(Some).ok_or_else(|| de::Error::custom(format!("{n} is not a whole number"))),
        Value::String(s) => {
            s.trim().parse::<u64>().map(Some).map_err(|_| de::Error::custom(format!("{s:?} is not a whole number")))
        }
        _ => Err(de::Error::custom(format!("expected a whole number, got {value}"))),
    }
}

/// `true`/`false` (any case), `ENABLED`/`DISABLED`, or a JSON boolean.
pub(super) fn de_opt_bool<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<bool>, D::Error> {
    let value = Value::deserialize(deserializer)?;
    match &value {
        Value::Bool(b) => Ok(Some(*b)),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "enabled" | "yes" => Ok(Some(true)),
            "false" | "disabled" | "no" => Ok(Some(false)),
            _ => Err(de::Error::custom(format!("{s:?} is not true or false"))),
        },
        _ => Err(de::Error::custom(format!("expected true or false, got {value}"))),
    }
}

/// A string, or a number or boolean written as one (CloudFormation's way).
pub(super) fn de_opt_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let value = Value::deserialize(deserializer)?;
    match value {
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        other => Err(de::Error::custom(format!("expected a string, got {other}"))),
    }
}
