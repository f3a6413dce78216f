//! What the stack's roles may reach outside Batchline's own resources — job secrets and log groups — held to the stack's name, as the template's `RoleBoundary` holds them.
//!
//! `RoleBoundary` caps both roles bootstrap makes: secrets named `<stack>/...` (Secrets
//! Manager) or under `/<stack>/` (SSM parameters), and the log groups `/aws/batch/job` and
//! `/batchline/<stack>/...`. A job definition naming anything else would deploy and then
//! fail as its job starts, so it is refused at deploy instead. These checks need the
//! CloudFormation stack's name (from the request), which the document itself does not
//! carry, so they run after [`super::declare`].

use super::{ConfigProblems, Declared};
use batchline::model::stack::DEFAULT_LOG_GROUP;

/// The CloudFormation stack a configuration is deployed in: its name, region and account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackPlace<'a> {
    pub name: &'a str,
    pub region: &'a str,
    pub account: &'a str,
}

/// Every problem with what `declared`'s job definitions would have the stack's roles
/// read (secrets) or write (log groups) outside what the boundary of `stack` allows.
pub fn check_in_stack(declared: &Declared, stack: StackPlace) -> Result<(), ConfigProblems> {
    let mut problems = Vec::new();
    let name = stack.name;
    for (key, definition) in &declared.job_definitions {
        for (variable, source) in &definition.secrets {
            if SecretSource::parse(source).filter(|s| s.is_the_stacks(stack)).is_none() {
                problems.push(format!(
                    "JobDefinitions.{key}.Secrets.{variable}: {source:?} is not a secret of this stack: give the ARN of a Secrets Manager secret named {name}/... or of an SSM parameter under /{name}/, in {} and account {} (RoleBoundary lets the stack's roles read only those)",
                    stack.region, stack.account
                ));
            }
        }
        let group = &definition.log_group;
        if group != DEFAULT_LOG_GROUP && !group.starts_with(&format!("/batchline/{name}/")) {
            problems.push(format!(
                "JobDefinitions.{key}.LogGroup {group:?}: use {DEFAULT_LOG_GROUP} or a log group under /batchline/{name}/ (RoleBoundary lets jobs write only to those)"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigProblems { problems })
    }
}

/// Where a job definition's secret comes from: a Secrets Manager secret or an SSM
/// parameter, by ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `arn:…:secretsmanager:<region>:<account>:secret:<name>` (the ARN as given, without
    /// a JSON key or version after it).
    Secret { arn: String, name: String },
    /// `arn:…:ssm:<region>:<account>:parameter/<name>`.
    Parameter { arn: String, name: String },
}

impl SecretSource {
    pub fn parse(source: &str) -> Option<SecretSource> {
        let parts: Vec<&str> = source.splitn(8, ':').collect();
        match parts.as_slice() {
            ["arn", _, "secretsmanager", _, _, "secret", name, ..] if !name.is_empty() => {
                Some(SecretSource::Secret { arn: parts[..7].join(":"), name: (*name).to_owned() })
            }
            ["arn", _, "ssm", _, _, resource] => {
                let name = resource.strip_prefix("parameter/").filter(|n| !n.is_empty())?;
                Some(SecretSource::Parameter { arn: source.to_owned(), name: name.to_owned() })
            }
            _ => None,
        }
    }

    fn is_the_stacks(&self, stack: StackPlace) -> bool {
        let (name, arn) = match self {
            SecretSource::Secret { name, arn } | SecretSource::Parameter { name, arn } => (name, arn),
        };
        let parts: Vec<&str> = arn.split(':').collect();
        let (region, account) = (parts.get(3).copied(), parts.get(4).copied());
        let named =
            name.strip_prefix(stack.name).and_then(|rest| rest.strip_prefix('/')).is_some_and(|r| !r.is_empty());
        named && region == Some(stack.region) && account == Some(stack.account)
    }

    /// The IAM resources reading it is authorised on: a secret's ARN as given and, when it
    /// was given without the random suffix Secrets Manager adds (`-AbCdEf`), with it.
    pub fn resources(&self) -> Vec<String> {
        match self {
            SecretSource::Secret { arn, .. } => vec![arn.clone(), format!("{arn}-??????")],
            SecretSource::Parameter { arn, .. } => vec![arn.clone()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDERS: StackPlace = StackPlace { name: "orders", region: "us-east-1", account: "123456789012" };

    fn with_definition(definition: serde_json::Value) -> Declared {
        let properties = serde_json::json!({"Network": {"Subnets": ["subnet-1"], "SecurityGroups": ["sg-1"]},
                                            "JobDefinitions": {"default": definition}});
        super::super::declare(&properties).unwrap()
    }

    #[test]
    fn secrets_and_log_groups_of_the_stack_pass_and_everything_else_is_refused_by_name() {
        let ours = with_definition(serde_json::json!({
            "Secrets": {"DB": "arn:aws:secretsmanager:us-east-1:123456789012:secret:orders/db:password::",
                        "TOKEN": "arn:aws:ssm:us-east-1:123456789012:parameter/orders/api/token"},
            "LogGroup": "/batchline/orders/jobs"}));
        assert_eq!(check_in_stack(&ours, ORDERS), Ok(()));
        let theirs = with_definition(serde_json::json!({
            "Secrets": {"DB": "arn:aws:secretsmanager:us-east-1:123456789012:secret:ordersx/db",
                        "TOKEN": "/orders/api/token", "ROOT": "arn:aws:ssm:us-east-1:123456789012:parameter/orders"},
            "LogGroup": "/aws/lambda/anything"}));
        let problems = check_in_stack(&theirs, ORDERS).unwrap_err().problems;
        assert_eq!(problems.len(), 4, "{problems:?}");
        for named in ["Secrets.DB", "Secrets.TOKEN", "Secrets.ROOT", "LogGroup \"/aws/lambda/anything\""] {
            assert!(problems.iter().any(|p| p.contains(named)), "{named} in {problems:?}");
        }
    }

    #[test]
    fn a_secret_of_the_stacks_name_in_another_region_or_account_is_not_the_stacks() {
        for elsewhere in [
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:orders/db",
            "arn:aws:secretsmanager:us-east-1:210987654321:secret:orders/db",
            "arn:aws:ssm:eu-west-1:123456789012:parameter/orders/token",
        ] {
            let declared = with_definition(serde_json::json!({"Secrets": {"DB": elsewhere}}));
            let problems = check_in_stack(&declared, ORDERS).unwrap_err().problems;
            assert!(problems[0].contains("in us-east-1 and account 123456789012"), "{problems:?}");
        }
    }

    #[test]
    fn a_secret_is_read_by_its_arn_with_or_without_its_suffix_and_never_by_its_json_key() {
        let given = "arn:aws:secretsmanager:us-east-1:123456789012:secret:orders/db:password:AWSCURRENT:";
        let source = SecretSource::parse(given).unwrap();
        let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:orders/db";
        assert_eq!(source.resources(), [arn.to_owned(), format!("{arn}-??????")]);
    }
}
