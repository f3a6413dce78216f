//! Fault injection through the emulator: a seeded share of calls per operation fails before taking effect or loses its reply after.
//!
//! One fault model with the SDK interceptors in [`crate::calls`]: a call either fails
//! *before* it reaches the service ([`crate::calls::FailOperation`]; here `fail`) or takes
//! effect and its reply is lost ([`crate::calls::LoseResponse`]; here `lose`), a 5xx either
//! way. The interceptors script the next calls of one client; a [`FaultScope`] draws from a
//! seeded random source for every client built from [`FaultScope::sdk_config`], so the
//! real handlers, with their own clients and the SDK's own retries, run under it. Scopes
//! are separate on the emulator, so tests that share it are not affected.

use std::collections::BTreeMap;

use aws_config::SdkConfig;
use serde_json::{json, Value};

use crate::emulator::{endpoint, sdk_config};

/// The share of an operation's calls that fail before taking effect and that take effect
/// and lose their reply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub fail: f64,
    pub lose: f64,
}

/// A scope of faults on the emulator, turned off when dropped.
pub struct FaultScope {
    name: String,
    http: reqwest::Client,
}

impl FaultScope {
    /// Turns faults on for the scope `name`: `rules` by operation (`service:Operation`,
    /// e.g. `dynamodb:PutItem`, `batch:SubmitJob`; `*` for any other), drawn from `seed`.
    pub async fn enable(name: &str, seed: u64, rules: &BTreeMap<&str, Rates>) -> Result<FaultScope, String> {
        let rules: serde_json::Map<String, Value> =
            rules.iter().map(|(op, r)| (op.to_string(), json!({"fail": r.fail, "lose": r.lose}))).collect();
        let scope = FaultScope { name: name.to_owned(), http: reqwest::Client::new() };
        let reply = scope
            .http
            .post(scope.admin_url())
            .body(json!({"seed": seed, "rules": rules}).to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !reply.status().is_success() {
            return Err(format!("enabling faults: HTTP {}", reply.status()));
        }
        Ok(scope)
    }

    fn admin_url(&self) -> String {
        format!("{}/_batchline/faults/{}", endpoint(), self.name)
    }

    /// An SDK configuration whose every call goes through the scope.
    pub async fn sdk_config(&self) -> SdkConfig {
        sdk_config().await.into_builder().endpoint_url(format!("{}/_faults/{}", endpoint(), self.name)).build()
    }

    /// What the scope did so far: per operation, `calls`, `fail` and `lose` counts.
    pub async fn counts(&self) -> Result<BTreeMap<String, BTreeMap<String, u64>>, String> {
        let reply = self.http.get(self.admin_url()).send().await.map_err(|e| e.to_string())?;
        let text = reply.text().await.map_err(|e| e.to_string())?;
        serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
    }

    /// Turns the faults off (calls through the scope then pass).
    pub async fn disable(&self) -> Result<(), String> {
        self.http.delete(self.admin_url()).send().await.map_err(|e| e.to_string())?;
        Ok(())
    }
}
