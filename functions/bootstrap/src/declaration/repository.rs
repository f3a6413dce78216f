//! The `Repository` section: the ECR repository job images are pushed to, held to the stack's prefix.

use batchline::model::stack::Repository;

use super::document::RepositoryDoc;
use super::physical_name;

/// ECR repository names: lowercase letters, digits, `._-/` between them, 2–256.
fn valid_repository_name(name: &str) -> bool {
    (2..=256).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Validates the `Repository` section, naming the repository after `prefix` unless it names it.
pub(super) fn resolve_repository(doc: &RepositoryDoc, prefix: &str, problems: &mut Vec<String>) -> Repository {
    let repository = Repository {
        name: doc.name.clone().unwrap_or_else(|| physical_name(prefix, "jobs").to_ascii_lowercase()),
        scan_on_push: doc.scan_on_push.unwrap_or(true),
        delete_on_stack_delete: doc.delete_on_stack_delete.unwrap_or(false),
    };
    if !valid_repository_name(&repository.name) {
        problems.push(format!(
            "Repository.Name {:?}: ECR names are 2-256 lowercase letters, digits and ._-/ (starting and ending with a letter or digit)",
            repository.name
        ));
    }
    // Held to the stack's prefix, as bootstrap's permissions are: it may change and delete
    // only repositories it created for this stack.
    let own_prefix = format!("{}-", prefix.to_ascii_lowercase());
    if !repository.name.starts_with(&own_prefix) {
        problems
            .push(format!("Repository.Name {:?}: must start with {own_prefix:?} (the NamePrefix)", repository.name));
    }
    repository
}
