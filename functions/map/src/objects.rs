//! S3 through the AWS SDK, behind the narrow port the map worker needs: list the keys under a prefix, read an object, write one.

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use batchline::model::map::S3Location;
use batchline::Error;

/// The S3 calls of a map's expansion and close.
#[async_trait]
pub trait Objects: Send + Sync {
    /// The keys under `prefix` in `bucket` that end with `suffix`, in ListObjectsV2 order
    /// (UTF-8 binary order); more than `limit` is [`Error::InvalidEvent`] saying so.
    async fn keys(&self, bucket: &str, prefix: &str, suffix: &str, limit: usize) -> Result<Vec<String>, Error>;
    /// An object's text; one larger than `max_bytes`, or not UTF-8, is [`Error::InvalidEvent`].
    async fn read(&self, at: &S3Location, max_bytes: u64) -> Result<String, Error>;
    async fn write(&self, at: &S3Location, body: String) -> Result<(), Error>;
}

/// S3 through the SDK.
pub struct S3Objects {
    client: aws_sdk_s3::Client,
}

impl S3Objects {
    pub fn new(client: aws_sdk_s3::Client) -> S3Objects {
        S3Objects { client }
    }
}

#[async_trait]
impl Objects for S3Objects {
    async fn keys(&self, bucket: &str, prefix: &str, suffix: &str, limit: usize) -> Result<Vec<String>, Error> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| Error::aws("ListObjectsV2", e))?;
            let found = page.contents().iter().filter_map(|object| object.key());
            keys.extend(found.filter(|key| key.ends_with(suffix)).map(str::to_owned));
            if keys.len() > limit {
                return Err(Error::InvalidEvent(format!(
                    "s3://{bucket}/{prefix} holds more than {limit} items, more than a map may have"
                )));
            }
            token = page.next_continuation_token().map(str::to_owned);
            if token.is_none() {
                return Ok(keys);
            }
        }
    }

    async fn read(&self, at: &S3Location, max_bytes: u64) -> Result<String, Error> {
        let object = self
            .client
            .get_object()
            .bucket(&at.bucket)
            .key(&at.key)
            .send()
            .await
            .map_err(|e| Error::aws("GetObject", e))?;
        let length = u64::try_from(object.content_length().unwrap_or(0)).unwrap_or(0);
        if length > max_bytes {
            return Err(Error::InvalidEvent(format!("{} holds {length} bytes, over the {max_bytes} read", at.uri())));
        }
        // A body cut off on the way is worth another try, not a reason to fail the stage.
        let bytes = object.body.collect().await.map_err(|e| Error::Aws {
            operation: "GetObject",
            code: "BodyNotRead".into(),
            message: format!("{}: {e}", at.uri()),
        })?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Error::InvalidEvent(format!("{} is not UTF-8 text", at.uri())))
    }

    async fn write(&self, at: &S3Location, body: String) -> Result<(), Error> {
        self.client
            .put_object()
            .bucket(&at.bucket)
            .key(&at.key)
            .content_type("application/x-ndjson")
            .body(ByteStream::from(body.into_bytes()))
            .send()
            .await
            .map_err(|e| Error::aws("PutObject", e))?;
        Ok(())
    }
}
