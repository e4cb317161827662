//! Media files in an S3-compatible bucket (`media.backend = "s3"`), through the `object_store`
//! crate: the same content addressing as the folder store (`<prefix>ab/cd/<sha256>`), so the
//! metadata in RocksDB does not care which backend holds the bytes.

use std::{io, ops::Range};

use bytes::Bytes;
use futures_util::{future::BoxFuture, FutureExt, StreamExt, TryStreamExt};
use object_store::{
    aws::{AmazonS3, AmazonS3Builder},
    path::Path,
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload,
};

use super::store::{ByteStream, ContentHash, MediaStore};
use crate::config;

pub struct S3Store {
    store: AmazonS3,
    prefix: String,
}

fn io_error(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e),
        other => io::Error::other(other),
    }
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl S3Store {
    pub fn open(config: &config::S3) -> io::Result<Self> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_virtual_hosted_style_request(!config.path_style);
        if !config.endpoint.is_empty() {
            builder = builder
                .with_endpoint(&config.endpoint)
                .with_allow_http(config.endpoint.starts_with("http://"));
        }
        // Without keys, object_store looks for the instance's or pod's role credentials.
        if !config.access_key_id.is_empty() {
            builder = builder
                .with_access_key_id(&config.access_key_id)
                .with_secret_access_key(&config.secret_access_key);
        }
        let store = builder.build().map_err(io::Error::other)?;
        Ok(Self {
            store,
            prefix: config.prefix.trim_matches('/').to_owned(),
        })
    }

    fn path(&self, hash: ContentHash) -> Path {
        let hex = hash.to_hex();
        let key = format!("{}/{}/{hex}", &hex[..2], &hex[2..4]);
        if self.prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        }
    }

    fn stream(result: object_store::GetResult) -> ByteStream {
        result.into_stream().map_err(io_error).boxed()
    }
}

impl MediaStore for S3Store {
    fn put(&self, hash: ContentHash, data: Bytes) -> BoxFuture<'_, io::Result<()>> {
        async move {
            // The key is the content's hash: writing it again writes the same bytes.
            self.store
                .put(&self.path(hash), PutPayload::from(data))
                .await
                .map_err(io_error)?;
            Ok(())
        }
        .boxed()
    }

    fn get(
        &self,
        hash: ContentHash,
        range: Option<Range<u64>>,
    ) -> BoxFuture<'_, io::Result<Option<ByteStream>>> {
        async move {
            let path = self.path(hash);
            let Some(range) = range else {
                return match self.store.get(&path).await {
                    Ok(result) => Ok(Some(Self::stream(result))),
                    Err(e) if is_not_found(&e) => Ok(None),
                    Err(e) => Err(io_error(e)),
                };
            };
            let empty = || Some(futures_util::stream::empty().boxed());
            if range.start >= range.end {
                return Ok(empty());
            }
            let options = GetOptions {
                range: Some(GetRange::Bounded(range.clone())),
                ..GetOptions::default()
            };
            match self.store.get_opts(&path, options).await {
                Ok(result) => Ok(Some(Self::stream(result))),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => {
                    // A range starting at or past the end (as the first bytes of an empty file)
                    // is refused by S3; the folder store reads nothing there, and so do we.
                    match self.store.head(&path).await {
                        Ok(meta) if range.start >= meta.size => Ok(empty()),
                        Err(h) if is_not_found(&h) => Ok(None),
                        _ => Err(io_error(e)),
                    }
                }
            }
        }
        .boxed()
    }

    fn delete(&self, hash: ContentHash) -> BoxFuture<'_, io::Result<()>> {
        async move {
            match self.store.delete(&self.path(hash)).await {
                Err(e) if !is_not_found(&e) => Err(io_error(e)),
                _ => Ok(()),
            }
        }
        .boxed()
    }

    fn exists(&self, hash: ContentHash) -> BoxFuture<'_, io::Result<bool>> {
        async move {
            match self.store.head(&self.path(hash)).await {
                Ok(_) => Ok(true),
                Err(e) if is_not_found(&e) => Ok(false),
                Err(e) => Err(io_error(e)),
            }
        }
        .boxed()
    }

    fn check(&self) -> BoxFuture<'_, io::Result<()>> {
        async move {
            // Listing fails for a missing bucket or refused credentials, where a missing key
            // would look the same as a file not stored yet.
            let prefix = (!self.prefix.is_empty()).then(|| Path::from(self.prefix.as_str()));
            self.store
                .list_with_delimiter(prefix.as_ref())
                .await
                .map_err(io_error)?;
            Ok(())
        }
        .boxed()
    }
}
