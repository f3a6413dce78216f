//! The `Roles` section: the execution and job roles' names, and what the job role may reach (one input bucket, its run-data folder).

use batchline::model::stack::RoleNames;

use super::document::RolesDoc;
use super::physical_name;

/// Where stages write when the document names a bucket but no `RunDataPrefix`.
pub const DEFAULT_RUN_DATA_PREFIX: &str = "runs/";

/// IAM role names: letters, digits and `+=,.@_-`, at most 64.
fn valid_role_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
}

/// S3 bucket names: 3-63 lowercase letters, digits, `.` and `-` (no wildcard).
fn valid_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-".contains(c))
}

/// A run-data folder: S3's safe key characters (no `*`, which IAM would read as a
/// wildcard) in non-empty segments, each ending in `/`, at most 200 in all.
fn valid_run_data_prefix(prefix: &str) -> bool {
    (2..=200).contains(&prefix.len())
        && prefix.ends_with('/')
        && prefix.split_terminator('/').all(|segment| {
            !segment.is_empty() && segment.chars().all(|c| c.is_ascii_alphanumeric() || "!-_.'()".contains(c))
        })
}

/// Validates the `Roles` section, naming the roles after `prefix` unless it names them.
pub(super) fn resolve_roles(doc: &RolesDoc, prefix: &str, problems: &mut Vec<String>) -> RoleNames {
    let roles = RoleNames {
        execution_role_name: doc.execution_role_name.clone().unwrap_or_else(|| physical_name(prefix, "execution")),
        job_role_name: doc.job_role_name.clone().unwrap_or_else(|| physical_name(prefix, "job")),
        input_bucket: doc.input_bucket.clone().filter(|b| !b.is_empty()),
        permissions_boundary: doc.permissions_boundary.clone().filter(|b| !b.is_empty()),
        run_data_prefix: match doc.run_data_prefix.as_deref() {
            None if doc.input_bucket.as_deref().is_some_and(|b| !b.is_empty()) => {
                Some(DEFAULT_RUN_DATA_PREFIX.to_owned())
            }
            None | Some("") => None,
            Some(prefix) => Some(prefix.to_owned()),
        },
    };
    check_roles(&roles, problems);
    roles
}

/// Refuses names IAM would refuse, and any reach wider than the stack's: the job role's
/// policy is written from these values, so a wildcard or a stray ARN here would widen it.
fn check_roles(roles: &RoleNames, problems: &mut Vec<String>) {
    if let Some(prefix) = &roles.run_data_prefix {
        if roles.input_bucket.is_none() {
            problems.push(format!("Roles.RunDataPrefix {prefix:?}: name the bucket too (Roles.InputBucket)"));
        }
        if !valid_run_data_prefix(prefix) {
            problems.push(format!(
                "Roles.RunDataPrefix {prefix:?}: give a folder like \"runs/\": letters, digits or !-_.'() in folders separated by single /, ending in /, at most 200"
            ));
        }
    }
    for (field, role) in [("ExecutionRoleName", &roles.execution_role_name), ("JobRoleName", &roles.job_role_name)] {
        if !valid_role_name(role) {
            problems.push(format!("Roles.{field} {role:?}: IAM role names are 1-64 letters, digits or +=,.@_-"));
        }
    }
    if let Some(bucket) = roles.input_bucket.as_deref().filter(|b| !valid_bucket_name(b)) {
        problems.push(format!(
            "Roles.InputBucket {bucket:?}: name one S3 bucket (3-63 lowercase letters, digits, . or -); the job role may read that bucket only"
        ));
    }
    if let Some(boundary) =
        roles.permissions_boundary.as_deref().filter(|b| !(b.starts_with("arn:") && b.contains(":policy/")))
    {
        problems.push(format!("Roles.PermissionsBoundary {boundary:?}: give the ARN of a managed policy"));
    }
}
