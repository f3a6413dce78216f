//! IAM: the task execution role and the job role, with the job role's access to the input bucket (read, and write under the run-data folder).

use aws_sdk_iam::types::Role;
use batchline::model::stack::RoleNames;

use crate::declaration::SecretSource;
use batchline::Error;
use serde_json::{json, Value};
use tracing::info;

use super::ECS_TASKS_TRUST;

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
            own_role(iam, name, path).await?.ok_or_else(|| Error::Aws {
                operation: "CreateRole",
                code: "EntityAlreadyExists".into(),
                message: format!(
                    "role {name} exists outside {path}: Batchline uses only roles under its stack's path; name another role in Roles, or delete this one if an earlier release of Batchline made it"
                ),
            })?;
            // ListRoles leaves the boundary out; the role is under the path, so it may be read.
            let found = iam.get_role().role_name(name).send().await.map_err(|e| Error::aws("GetRole", e))?;
            let found = found.role().ok_or_else(|| Error::Aws {
                operation: "GetRole",
                code: "NoRole".into(),
                message: format!("GetRole of {name} answered no role"),
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

/// The job role's own policy: read the input bucket, and write under its run-data folder
/// except Batchline's own files there (`*/_batchline/*`); nothing else. `None` without an
/// input bucket.
pub fn job_role_policy(names: &RoleNames) -> Option<Value> {
    let bucket = names.input_bucket.as_deref()?;
    let mut statements = vec![
        json!({"Effect": "Allow", "Action": "s3:GetObject", "Resource": format!("arn:aws:s3:::{bucket}/*")}),
        json!({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": format!("arn:aws:s3:::{bucket}")}),
    ];
    if let Some(folder) = &names.run_data_prefix {
        statements.push(json!({"Effect": "Allow", "Action": "s3:PutObject", "Resource": format!("arn:aws:s3:::{bucket}/{folder}*")}));
        // Batchline's own files of a stage (`<stage>/_batchline/`: a map's item lists and
        // results) are read, never written, by its jobs.
        statements.push(json!({"Effect": "Deny", "Action": ["s3:PutObject", "s3:DeleteObject"],
                               "Resource": format!("arn:aws:s3:::{bucket}/{folder}*/_batchline/*")}));
    }
    Some(json!({"Version": "2012-10-17", "Statement": statements}))
}

/// The execution role's own policy: read exactly the secrets the job definitions name (ECS
/// reads them with this role as a job starts; `AmazonECSTaskExecutionRolePolicy` has no
/// secret read). `None` when they name none.
pub fn execution_role_policy(secrets: &[SecretSource]) -> Option<Value> {
    let resources = |parameters: bool| -> Vec<String> {
        secrets
            .iter()
            .filter(|s| matches!(s, SecretSource::Parameter { .. }) == parameters)
            .flat_map(SecretSource::resources)
            .collect()
    };
    let statements: Vec<Value> =
        [("secretsmanager:GetSecretValue", resources(false)), ("ssm:GetParameters", resources(true))]
            .into_iter()
            .filter(|(_, resources)| !resources.is_empty())
            .map(|(action, resources)| json!({"Effect": "Allow", "Action": action, "Resource": resources}))
            .collect();
    (!statements.is_empty()).then(|| json!({"Version": "2012-10-17", "Statement": statements}))
}

/// Puts `policy` on the role as its inline policy `name`, or removes that policy when
/// there is none.
pub(super) async fn ensure_inline_policy(
    iam: &aws_sdk_iam::Client,
    role: &str,
    name: &str,
    policy: Option<Value>,
) -> Result<(), Error> {
    match policy {
        Some(policy) => {
            iam.put_role_policy()
                .role_name(role)
                .policy_name(name)
                .policy_document(policy.to_string())
                .send()
                .await
                .map_err(|e| Error::aws("PutRolePolicy", e))?;
        }
        None => {
            if let Err(err) = iam.delete_role_policy().role_name(role).policy_name(name).send().await {
                let err = Error::aws("DeleteRolePolicy", err);
                if err.aws_code() != Some("NoSuchEntity") {
                    return Err(err);
                }
            }
        }
    }
    Ok(())
}

/// The role `name` if it exists under `path` (as ListRoles shows it: without its boundary).
/// Found by listing the path rather than reading the name: a role that does not exist has no
/// path, so IAM authorises a read of a missing name on its path-less ARN — outside
/// bootstrap's reach, an AccessDenied rather than "no such role". Listing tells "gone" from
/// "elsewhere" without that; a role of that name elsewhere, or none, is `None` alike.
async fn own_role(iam: &aws_sdk_iam::Client, name: &str, path: &str) -> Result<Option<Role>, Error> {
    let mut pages = iam.list_roles().path_prefix(path).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| Error::aws("ListRoles", e))?;
        if let Some(role) = page.roles().iter().find(|r| r.role_name() == name && r.path() == path) {
            return Ok(Some(role.clone()));
        }
    }
    Ok(None)
}

/// Deletes the role `name` if it is one of the stack's (under `path`); a role of that name
/// elsewhere is not Batchline's to delete, and one already gone is done.
pub(super) async fn delete_role(iam: &aws_sdk_iam::Client, name: &str, path: &str) -> Result<(), Error> {
    if own_role(iam, name, path).await?.is_none() {
        info!(role = name, path, "no such role under the stack's path: nothing to delete");
        return Ok(());
    }
    let not_found = |err: &Error| err.aws_code() == Some("NoSuchEntity");
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
