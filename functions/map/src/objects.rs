//! S3 through the AWS SDK, behind the narrow port the map worker needs: list the keys under a prefix, read an object, write one.

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use batchline::model::map::S3Location;
use batchline::Error;

/// The S3 calls of a map's expansion and close.
#[async_trait]
pub trait Objects: Send + Sync {
    /// One page of the keys under `prefix` in `bucket`, in ListObjectsV2 order (UTF-8 binary
    /// order), from just after the key `after` (from the start without one).
    async fn keys_page(&self, bucket: &str, prefix: &str, after: Option<&str>) -> Result<KeysPage, Error>;
    /// An object's text; one larger than `max_bytes`, or not UTF-8, is [`Error::InvalidEvent`].
    async fn read(&self, at: &S3Location, max_bytes: u64) -> Result<String, Error>;
    async fn write(&self, at: &S3Location, body: String) -> Result<(), Error>;
}

/// A page of keys, and whether more follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysPage {
    pub keys: Vec<String>,
    pub more: bool,
}

/// S3 through the SDK.
pub struct S3Objects {
    client: aws_sdk_s3::Client,
    page_size: i32,
}

impl S3Objects {
    pub fn new(client: aws_sdk_s3::Client) -> S3Objects {
        // S3's own page size, and its largest.
        S3Objects { client, page_size: 1_000 }
    }

    /// Pages of `size` keys (tests list a few hundred objects in several pages).
    pub fn with_page_size(mut self, size: i32) -> S3Objects {
        self.page_size = size;
        self
    }
}

#[async_trait]
impl Objects for S3Objects {
    async fn keys_page(&self, bucket: &str, prefix: &str, after: Option<&str>) -> Result<KeysPage, Error> {
        // StartAfter, not a continuation token: a listing resumed by another invocation
        // goes on from the last key it kept, whatever became of the token.
        let page = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_start_after(after.map(str::to_owned))
            .max_keys(self.page_size)
            .send()
            .await
            .map_err(|e| Error::aws("ListObjectsV2", e))?;
        let keys = page.contents().iter().filter_map(|object| object.key()).map(str::to_owned).collect();
        Ok(KeysPage { keys, more: page.is_truncated() == Some(true) })
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
