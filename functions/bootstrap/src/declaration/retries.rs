//! `RetryOn`: which exits Batch retries, declared per job definition or per stage, checked against what Batch takes.
//!
//! A rule's keys and the patterns they take are in the stack configuration reference,
//! `docs/src/reference/stack-configuration.md`. Batchline adds an out-of-memory `Exit`
//! before the rules and a catch-all `Exit` after (see `batchline::model::retry`), so an
//! exit no rule names is not retried; without `RetryOn`, a reclaimed Spot task, a lost host
//! and a failed image pull are.

use batchline::model::retry::{valid_exit_code_pattern, valid_reason_pattern, RetryAction, RetryRule, MAX_USER_RULES};
use serde::Deserialize;

use super::values::de_opt_text;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct RetryRuleDoc {
    #[serde(default, deserialize_with = "de_opt_text")]
    pub exit_code: Option<String>,
    pub status_reason: Option<String>,
    pub reason: Option<String>,
    pub action: Option<String>,
}

/// The rules of `path.RetryOn`, every problem named.
pub fn resolve_rules(path: &str, docs: &[RetryRuleDoc], problems: &mut Vec<String>) -> Vec<RetryRule> {
    let path = format!("{path}.RetryOn");
    if docs.len() > MAX_USER_RULES {
        problems.push(format!(
            "{path}: {} rules; at most {MAX_USER_RULES} (Batch takes 5, and Batchline adds two: out of memory exits first, any other exit last)",
            docs.len()
        ));
    }
    let mut rules = Vec::new();
    for (index, doc) in docs.iter().enumerate() {
        let at = format!("{path}[{index}]");
        let action = match doc.action.as_deref() {
            Some("Retry") => RetryAction::Retry,
            Some("Exit") => RetryAction::Exit,
            other => {
                problems.push(format!("{at}.Action {:?}: use Retry or Exit", other.unwrap_or_default()));
                continue;
            }
        };
        if doc.exit_code.is_none() && doc.status_reason.is_none() && doc.reason.is_none() {
            problems.push(format!("{at}: name ExitCode, StatusReason or Reason"));
        }
        if let Some(code) = doc.exit_code.as_deref().filter(|c| !valid_exit_code_pattern(c)) {
            problems.push(format!("{at}.ExitCode {code:?}: digits, optionally ending in *"));
        }
        for (field, text) in [("StatusReason", &doc.status_reason), ("Reason", &doc.reason)] {
            if let Some(text) = text.as_deref().filter(|t| !valid_reason_pattern(t)) {
                problems.push(format!(
                    "{at}.{field} {text:?}: letters, digits, '.', ':' and spaces, optionally ending in *, at most 512"
                ));
            }
        }
        rules.push(RetryRule {
            on_exit_code: doc.exit_code.clone(),
            on_status_reason: doc.status_reason.clone(),
            on_reason: doc.reason.clone(),
            action,
        });
    }
    rules
}
