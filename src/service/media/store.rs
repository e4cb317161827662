//! Where media bytes live. `MediaStore` is addressed by the SHA-256 of the content, so identical
//! uploads share one file; it knows nothing of media IDs, users or thumbnails (that is metadata in
//! RocksDB). The trait is small on purpose: put, ranged get, delete and exists are all an
//! S3-compatible object store needs to back it (`s3.rs`).

use std::{
    io::{self, Write as _},
    ops::Range,
    path::{Path, PathBuf},
};

use bytes::Bytes;
use futures_util::{future::BoxFuture, stream::BoxStream, FutureExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// The SHA-256 of a file's content: its address in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

/// A file's bytes as they are read.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// Content-addressed blob storage.
pub trait MediaStore: Send + Sync + 'static {
    /// Stores `data` under `hash` (its SHA-256). Content already present is left as it is.
    fn put(&self, hash: ContentHash, data: Bytes) -> BoxFuture<'_, io::Result<()>>;
    /// The bytes of a file, or of `range` of it; `None` when the file is missing.
    fn get(
        &self,
        hash: ContentHash,
        range: Option<Range<u64>>,
    ) -> BoxFuture<'_, io::Result<Option<ByteStream>>>;
    /// Removes a file; a missing one is not an error.
    fn delete(&self, hash: ContentHash) -> BoxFuture<'_, io::Result<()>>;
    fn exists(&self, hash: ContentHash) -> BoxFuture<'_, io::Result<bool>>;
    /// Fails when the store cannot be used (checked at start, so a misconfigured store stops
    /// the server instead of failing every upload); a folder made at open has nothing to check.
    fn check(&self) -> BoxFuture<'_, io::Result<()>> {
        futures_util::future::ready(Ok(())).boxed()
    }
}

/// Reads a whole file into memory, refusing more than `limit` bytes (`Ok(None)` when missing).
pub async fn read_all(
    store: &dyn MediaStore,
    hash: ContentHash,
    limit: u64,
) -> io::Result<Option<Vec<u8>>> {
    let Some(mut stream) = store.get(hash, None).await? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(io::Error::other("file is larger than the limit"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Some(out))
}

/// Files in a folder, fanned out as `ab/cd/abcd…` so no directory grows huge. New files are
/// written under `tmp/` and renamed into place, so a crash never leaves a partial file at a
/// content address.
pub struct FsStore {
    root: PathBuf,
}

const CHUNK: usize = 64 << 10;

impl FsStore {
    pub fn open(root: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(root.join("tmp"))?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    fn path(&self, hash: ContentHash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join(&hex[..2]).join(&hex[2..4]).join(hex)
    }
}

impl MediaStore for FsStore {
    fn put(&self, hash: ContentHash, data: Bytes) -> BoxFuture<'_, io::Result<()>> {
        let path = self.path(hash);
        let tmp = self.root.join("tmp").join(format!(
            "{}.{}",
            hash.to_hex(),
            crate::util::random_string(8)
        ));
        // One blocking task for the whole file: tokio's File would hand a large write to the
        // blocking pool in 2 MiB pieces, each copied.
        async move {
            tokio::task::spawn_blocking(move || {
                if path.try_exists()? {
                    return Ok(());
                }
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let written = (|| {
                    let mut file = std::fs::File::create(&tmp)?;
                    file.write_all(&data)?;
                    // On disk before it has a name: a crash leaves no partial file at an address.
                    file.sync_all()?;
                    std::fs::rename(&tmp, &path)
                })();
                if written.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                written
            })
            .await
            .map_err(io::Error::other)?
        }
        .boxed()
    }

    fn get(
        &self,
        hash: ContentHash,
        range: Option<Range<u64>>,
    ) -> BoxFuture<'_, io::Result<Option<ByteStream>>> {
        async move {
            let mut file = match tokio::fs::File::open(self.path(hash)).await {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let remaining = match range {
                Some(r) => {
                    file.seek(io::SeekFrom::Start(r.start)).await?;
                    r.end.saturating_sub(r.start)
                }
                None => u64::MAX,
            };
            let stream = futures_util::stream::try_unfold(
                (file, remaining),
                |(mut file, remaining)| async move {
                    if remaining == 0 {
                        return Ok(None);
                    }
                    let want = remaining.min(CHUNK as u64) as usize;
                    let mut buf = vec![0u8; want];
                    let n = file.read(&mut buf).await?;
                    if n == 0 {
                        return Ok(None);
                    }
                    buf.truncate(n);
                    Ok(Some((Bytes::from(buf), (file, remaining - n as u64))))
                },
            );
            Ok(Some(stream.boxed()))
        }
        .boxed()
    }

    fn delete(&self, hash: ContentHash) -> BoxFuture<'_, io::Result<()>> {
        async move {
            match tokio::fs::remove_file(self.path(hash)).await {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
        .boxed()
    }

    fn exists(&self, hash: ContentHash) -> BoxFuture<'_, io::Result<bool>> {
        async move { tokio::fs::try_exists(self.path(hash)).await }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn files_are_stored_once_read_in_ranges_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let data = Bytes::from((0..200_000u32).map(|i| i as u8).collect::<Vec<_>>());
        let hash = ContentHash::of(&data);
        store.put(hash, data.clone()).await.unwrap();
        store.put(hash, data.clone()).await.unwrap();
        assert!(store.exists(hash).await.unwrap());
        let all = read_all(&store, hash, u64::MAX).await.unwrap().unwrap();
        assert_eq!(all, data);
        assert!(read_all(&store, hash, 10).await.is_err());
        let mut part = Vec::new();
        let mut s = store.get(hash, Some(100..70_000)).await.unwrap().unwrap();
        while let Some(c) = s.next().await {
            part.extend_from_slice(&c.unwrap());
        }
        assert_eq!(part, &data[100..70_000]);
        store.delete(hash).await.unwrap();
        store.delete(hash).await.unwrap();
        assert!(!store.exists(hash).await.unwrap());
        assert!(store.get(hash, None).await.unwrap().is_none());
        assert_eq!(ContentHash::from_hex(&hash.to_hex()), Some(hash));
    }
}
