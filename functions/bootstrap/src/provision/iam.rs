//! IAM: the task execution role and the job role, with the job role's access to the input bucket (read, and write under the run-data folder).

use aws_sdk_iam::types::Role;
use batchline::model::stack::RoleNames;
use batchline::Error;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::{ECS_TASKS_TRUST, JOB_ROLE_POLICY};

/// The role `name` under `path`, trusted by ECS tasks, under `boundary` when one is
/// configured, with `managed_policy` attached.
///
/// Created first and looked up only if it exists: a role's ARN carries its path, and a
/// role of that name elsewhere (the stack's own Lambda roles, another stack's) is refused
/// here — and by bootstrap's policy, which reaches `path` only — never taken over.
pub(super) async fn ensure_role(
    iam: &aws_sdk_iam::Client,
    name: &str,
    path: &str,
    managed_policy: Option<&str>,
    boundary: Option<&str>,
) -> Result<String, Error> {
    let created = iam
        .create_role()
        .role_name(name)
        .path(path)
        .assume_role_policy_document(ECS_TASKS_TRUST)
        .description("Batchline: assumed by ECS tasks of AWS Batch jobs")
        .set_permissions_boundary(boundary.map(str::to_owned))
        .send()
        .await;
    let arn = match created {
        Ok(created) => {
            info!(role = name, path, "role created");
            created.role().map(|r| r.arn().to_owned()).unwrap_or_default()
        }
        Err(err) => {
            let err = Error::aws("CreateRole", err);
            if err.aws_code() != Some("EntityAlreadyExists") {
                return Err(err);
            }
            let found = own_role(iam, name, path).await?.ok_or_else(|| Error::Aws {
                operation: "CreateRole",
                code: "EntityAlreadyExists".into(),
                message: format!(
                    "role {name} exists outside {path}: Batchline uses only roles it created under its stack's path; name another role in Roles, or delete this one if an earlier release of Batchline made it"
                ),
            })?;
            let current = found.permissions_boundary().and_then(|b| b.permissions_boundary_arn());
            if let Some(boundary) = boundary.filter(|b| current != Some(*b)) {
                iam.put_role_permissions_boundary()
                    .role_name(name)
                    .permissions_boundary(boundary)
                    .send()
                    .await
                    .map_err(|e| Error::aws("PutRolePermissionsBoundary", e))?;
            }
            iam.update_assume_role_policy()
                .role_name(name)
                .policy_document(ECS_TASKS_TRUST)
                .send()
                .await
                .map_err(|e| Error::aws("UpdateAssumeRolePolicy", e))?;
            found.arn().to_owned()
        }
    };
    if let Some(policy) = managed_policy {
        iam.attach_role_policy()
            .role_name(name)
            .policy_arn(policy)
            .send()
            .await
            .map_err(|e| Error::aws("AttachRolePolicy", e))?;
    }
    Ok(arn)
}

/// The job role's own policy: read the input bucket, and write under its run-data folder;
/// nothing else. `None` without an input bucket.
pub fn job_role_policy(names: &RoleNames) -> Option<Value> {
    let bucket = names.input_bucket.as_deref()?;
    let mut statements = vec![
        json!({"Effect": "Allow", "Action": "s3:GetObject", "Resource": format!("arn:aws:s3:::{bucket}/*")}),
        json!({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": format!("arn:aws:s3:::{bucket}")}),
    ];
    if let Some(folder) = &names.run_data_prefix {
        statements.push(json!({"Effect": "Allow", "Action": "s3:PutObject", "Resource": format!("arn:aws:s3:::{bucket}/{folder}*")}));
    }
    Some(json!({"Version": "2012-10-17", "Statement": statements}))
}

/// Puts the job role's policy ([`job_role_policy`]) on it, or removes it when there is none.
pub(super) async fn ensure_job_role_policy(iam: &aws_sdk_iam::Client, names: &RoleNames) -> Result<(), Error> {
    let role = &names.job_role_name;
    match job_role_policy(names) {
        Some(policy) => {
            iam.put_role_policy()
                .role_name(role)
                .policy_name(JOB_ROLE_POLICY)
                .policy_document(policy.to_string())
                .send()
                .await
                .map_err(|e| Error::aws("PutRolePolicy", e))?;
        }
        None => {
            if let Err(err) = iam.delete_role_policy().role_name(role).policy_name(JOB_ROLE_POLICY).send().await {
                let err = Error::aws("DeleteRolePolicy", err);
                if err.aws_code() != Some("NoSuchEntity") {
                    return Err(err);
                }
            }
        }
    }
    Ok(())
}

/// The role `name` if it exists under `path`; `None` if it exists elsewhere (bootstrap's
/// policy denies reading roles outside its path, so a denial means the same).
async fn own_role(iam: &aws_sdk_iam::Client, name: &str, path: &str) -> Result<Option<Role>, Error> {
    match iam.get_role().role_name(name).send().await {
        Ok(found) => Ok(found.role().filter(|r| r.path() == path).cloned()),
        Err(err) => {
            let err = Error::aws("GetRole", err);
            match err.aws_code() {
                Some("AccessDenied") => Ok(None),
                _ => Err(err),
            }
        }
    }
}

/// Deletes the role `name` if it is one of the stack's (under `path`); a role of that name
/// elsewhere is not Batchline's to delete, and one already gone is done.
pub(super) async fn delete_role(iam: &aws_sdk_iam::Client, name: &str, path: &str) -> Result<(), Error> {
    let not_found = |err: &Error| err.aws_code() == Some("NoSuchEntity");
    match own_role(iam, name, path).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            warn!(role = name, path, "a role of this name exists outside the stack's path: left alone");
            return Ok(());
        }
        Err(err) if not_found(&err) => return Ok(()),
        Err(err) => return Err(err),
    }
    let attached = match iam.list_attached_role_policies().role_name(name).send().await {
        Ok(attached) => attached,
        Err(err) => {
            let err = Error::aws("ListAttachedRolePolicies", err);
            return if not_found(&err) { Ok(()) } else { Err(err) };
        }
    };
    for policy in attached.attached_policies().iter().filter_map(|p| p.policy_arn()) {
        iam.detach_role_policy()
            .role_name(name)
            .policy_arn(policy)
            .send()
            .await
            .map_err(|e| Error::aws("DetachRolePolicy", e))?;
    }
    let inline =
        iam.list_role_policies().role_name(name).send().await.map_err(|e| Error::aws("ListRolePolicies", e))?;
    for policy in inline.policy_names() {
        iam.delete_role_policy()
            .role_name(name)
            .policy_name(policy)
            .send()
            .await
            .map_err(|e| Error::aws("DeleteRolePolicy", e))?;
    }
    match iam.delete_role().role_name(name).send().await {
        Ok(_) => Ok(()),
        Err(err) => {
            let err = Error::aws("DeleteRole", err);
            if not_found(&err) {
                Ok(())
            } else {
                Err(err)
            }
        }
    }
}
