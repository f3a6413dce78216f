//! ECR: the repository job images are pushed to (scan on push; kept on delete unless configured).

use batchline::model::stack::Repository;
use batchline::Error;
use tracing::info;

use super::{build_error, STACK_TAG};

pub(super) async fn ensure_repository(
    ecr: &aws_sdk_ecr::Client,
    repository: &Repository,
    stack: &str,
) -> Result<String, Error> {
    match ecr.describe_repositories().repository_names(&repository.name).send().await {
        Ok(found) => {
            let existing = found.repositories().first();
            let scanning = existing.and_then(|r| r.image_scanning_configuration()).map(|c| c.scan_on_push());
            if scanning != Some(repository.scan_on_push) {
                ecr.put_image_scanning_configuration()
                    .repository_name(&repository.name)
                    .image_scanning_configuration(
                        aws_sdk_ecr::types::ImageScanningConfiguration::builder()
                            .scan_on_push(repository.scan_on_push)
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| Error::aws("PutImageScanningConfiguration", e))?;
            }
            Ok(existing.and_then(|r| r.repository_uri()).unwrap_or_default().to_owned())
        }
        Err(err) => {
            let err = Error::aws("DescribeRepositories", err);
            if err.aws_code() != Some("RepositoryNotFoundException") {
                return Err(err);
            }
            let created = ecr
                .create_repository()
                .repository_name(&repository.name)
                .image_scanning_configuration(
                    aws_sdk_ecr::types::ImageScanningConfiguration::builder()
                        .scan_on_push(repository.scan_on_push)
                        .build(),
                )
                .tags(aws_sdk_ecr::types::Tag::builder().key(STACK_TAG).value(stack).build().map_err(build_error)?)
                .send()
                .await
                .map_err(|e| Error::aws("CreateRepository", e))?;
            info!(repository = %repository.name, "repository created");
            Ok(created.repository().and_then(|r| r.repository_uri()).unwrap_or_default().to_owned())
        }
    }
}

/// Deletes the repository `name`, images and all; one already gone is done. Looked up
/// first: bootstrap may delete only repositories tagged as its stack's, and a repository
/// that no longer exists has no tags, so AWS would refuse the delete rather than say
/// "not found".
pub(super) async fn delete_repository(ecr: &aws_sdk_ecr::Client, name: &str) -> Result<(), Error> {
    if let Err(err) = ecr.describe_repositories().repository_names(name).send().await {
        let err = Error::aws("DescribeRepositories", err);
        return if err.aws_code() == Some("RepositoryNotFoundException") { Ok(()) } else { Err(err) };
    }
    match ecr.delete_repository().repository_name(name).force(true).send().await {
        Ok(_) => Ok(()),
        Err(err) => {
            let err = Error::aws("DeleteRepository", err);
            if err.aws_code() == Some("RepositoryNotFoundException") {
                Ok(())
            } else {
                Err(err)
            }
        }
    }
}
