//! Retry rules: which exits Batch retries, as Batch's `retryStrategy.evaluateOnExit` takes them.
//!
//! Batch evaluates at most five rules in order and retries an exit that matches none (while
//! attempts remain). Batchline always puts two of its own around the user's: first, an
//! out-of-memory kill EXITs — resizing is job-events' work and must not spend Batch's
//! attempts — and last, a catch-all EXIT, so an exit the rules do not name is not retried.
//! Between them go the user's rules (at most [`MAX_USER_RULES`]) or, when there are none,
//! the default: retry a reclaimed Spot task, a lost host and a failed image pull.

use serde::{Deserialize, Serialize};

/// The most rules a job definition or stage may declare: Batch takes five, and two are Batchline's.
pub const MAX_USER_RULES: usize = 3;

/// What Batch does with an exit a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RetryAction {
    Retry,
    Exit,
}

/// One `evaluateOnExit` rule: every pattern given must match (Batch's glob: an exact
/// string, or a prefix ending in `*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_exit_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_status_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_reason: Option<String>,
    pub action: RetryAction,
}

/// How often Batch runs a job, and which exits it retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    pub attempts: u32,
    /// The user's rules; empty for the default.
    #[serde(default)]
    pub rules: Vec<RetryRule>,
}

fn rule(on_status_reason: Option<&str>, on_reason: Option<&str>, action: RetryAction) -> RetryRule {
    RetryRule {
        on_exit_code: None,
        on_status_reason: on_status_reason.map(str::to_owned),
        on_reason: on_reason.map(str::to_owned),
        action,
    }
}

impl RetryPolicy {
    /// The `evaluateOnExit` list Batch is given: out of memory exits, then the user's rules
    /// (or the default retries of transient infrastructure failures), then a catch-all exit.
    pub fn evaluate_on_exit(&self) -> Vec<RetryRule> {
        let mut rules = vec![rule(None, Some("OutOfMemoryError*"), RetryAction::Exit)];
        if self.rules.is_empty() {
            rules.push(rule(Some("Your Spot Task was interrupted*"), None, RetryAction::Retry));
            rules.push(rule(Some("Host EC2*"), None, RetryAction::Retry));
            rules.push(rule(None, Some("CannotPullContainerError*"), RetryAction::Retry));
        } else {
            rules.extend(self.rules.iter().cloned());
        }
        rules.push(rule(None, Some("*"), RetryAction::Exit));
        rules
    }
}

/// Whether `text` is a valid exit-code pattern: digits, optionally ending in `*`.
pub fn valid_exit_code_pattern(text: &str) -> bool {
    let digits = text.strip_suffix('*').unwrap_or(text);
    (1..=512).contains(&text.len()) && digits.chars().all(|c| c.is_ascii_digit()) && !text.is_empty()
}

/// Whether `text` is a valid reason pattern: letters, digits, `.`, `:` and white space,
/// optionally ending in `*`, at most 512.
pub fn valid_reason_pattern(text: &str) -> bool {
    let body = text.strip_suffix('*').unwrap_or(text);
    (1..=512).contains(&text.len())
        && body.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == ':' || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_exits_first_and_an_unnamed_exit_last_around_the_users_rules_or_the_default() {
        let default = RetryPolicy { attempts: 3, rules: vec![] }.evaluate_on_exit();
        assert_eq!(default.len(), 5);
        assert_eq!(default[0].on_reason.as_deref(), Some("OutOfMemoryError*"));
        assert_eq!(default[1].on_status_reason.as_deref(), Some("Your Spot Task was interrupted*"));
        assert_eq!((default[4].on_reason.as_deref(), default[4].action), (Some("*"), RetryAction::Exit));
        let mine = RetryRule {
            on_exit_code: Some("3".into()),
            on_status_reason: None,
            on_reason: None,
            action: RetryAction::Retry,
        };
        let users = RetryPolicy { attempts: 2, rules: vec![mine.clone(); MAX_USER_RULES] }.evaluate_on_exit();
        assert_eq!(users.len(), 5, "Batch's limit");
        assert_eq!(users[1], mine);
        assert_eq!(users[4].action, RetryAction::Exit);
    }

    #[test]
    fn patterns_are_what_batch_accepts() {
        for good in ["1", "13*", "*"] {
            assert!(valid_exit_code_pattern(good), "{good}");
        }
        for bad in ["", "1a", "*1", "-1"] {
            assert!(!valid_exit_code_pattern(bad), "{bad}");
        }
        assert!(valid_reason_pattern("Task failed to start*"));
        assert!(valid_reason_pattern("CannotPullContainerError: x"));
        assert!(!valid_reason_pattern("no*wildcards*inside"));
        assert!(!valid_reason_pattern("semi;colon"));
    }
}
