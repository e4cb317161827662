//! The only code that touches RocksDB. Services see the narrow `KeyValue` trait (point reads,
//! atomic batches, ordered scans) so that a distributed transactional engine could back it later;
//! services reach keyspaces through typed tables (`table`), one per keyspace (`tables`).

mod rocks;
pub mod schema;
mod shortid;
pub mod table;
pub mod tables;

use std::sync::Arc;

pub use rocks::RocksDb;
pub use schema::{Cf, IdKind, ShortId};
pub use shortid::ShortIds;
pub use table::Table;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database: {0}")]
    Engine(String),
    #[error("corrupt value in {cf}: {reason}")]
    Corrupt { cf: &'static str, reason: String },
    #[error("database was written by a newer Hearth (schema {found}, this build knows {known})")]
    NewerSchema { found: u64, known: u64 },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
pub use self::Result as StorageResult;

/// One change in a write batch.
#[derive(Debug)]
pub enum Op {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
}

/// Changes applied together or not at all.
#[derive(Debug, Default)]
pub struct Batch {
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put(cf, key.into(), value.into()));
    }
    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete(cf, key.into()));
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// An ordered sequence of key-value pairs from a scan.
pub type KvIter<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + Send + 'a>;

/// The storage engine as the rest of the server sees it.
///
/// Every `write` is durable (in the write-ahead log, synced) when it returns: callers tell clients
/// and peers that something succeeded only after it.
pub trait KeyValue: Send + Sync + 'static {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;
    fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>>;
    fn write(&self, batch: Batch) -> Result<()>;
    /// Keys starting with `prefix`, in ascending order.
    fn scan_prefix<'a>(&'a self, cf: Cf, prefix: &[u8]) -> KvIter<'a>;
    /// Keys in `[from, to)` ascending, or in `(to, from]` descending when `reverse`.
    fn scan_range<'a>(&'a self, cf: Cf, from: &[u8], to: &[u8], reverse: bool) -> KvIter<'a>;
    /// Flushes memtables; used at shutdown so the next start replays no WAL.
    fn flush(&self) -> Result<()>;
}

/// The database handle services hold: the engine plus helpers shared by all of them.
#[derive(Clone)]
pub struct Db {
    kv: Arc<dyn KeyValue>,
}

impl Db {
    pub fn new(kv: Arc<dyn KeyValue>) -> Result<Self> {
        let db = Self { kv };
        db.check_schema()?;
        Ok(db)
    }

    fn check_schema(&self) -> Result<()> {
        let found = self
            .kv
            .get(Cf::Global, schema::key::GLOBAL_SCHEMA_VERSION)?
            .map(|v| decode_u64(Cf::Global, &v))
            .transpose()?;
        match found {
            Some(v) if v > schema::SCHEMA_VERSION => Err(StorageError::NewerSchema {
                found: v,
                known: schema::SCHEMA_VERSION,
            }),
            Some(_) => Ok(()),
            None => {
                let mut b = Batch::new();
                b.put(
                    Cf::Global,
                    schema::key::GLOBAL_SCHEMA_VERSION,
                    schema::SCHEMA_VERSION.to_be_bytes(),
                );
                self.kv.write(b)
            }
        }
    }

    pub fn kv(&self) -> &dyn KeyValue {
        &*self.kv
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.kv.get(cf, key)
    }

    pub fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        self.kv.multi_get(cf, keys)
    }

    pub fn scan_prefix<'a>(&'a self, cf: Cf, prefix: &[u8]) -> KvIter<'a> {
        self.kv.scan_prefix(cf, prefix)
    }

    pub fn scan_range<'a>(&'a self, cf: Cf, from: &[u8], to: &[u8], reverse: bool) -> KvIter<'a> {
        self.kv.scan_range(cf, from, to, reverse)
    }

    /// Reads a JSON value.
    pub fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        cf: Cf,
        key: &[u8],
    ) -> Result<Option<T>> {
        self.kv
            .get(cf, key)?
            .map(|v| decode_json(cf, &v))
            .transpose()
    }

    /// Writes a batch off the async executor: a synced write waits on the disk, and RocksDB groups
    /// concurrent writers into one fsync only when they arrive on different threads.
    pub async fn write(&self, batch: Batch) -> Result<()> {
        self.write_holding(batch, ()).await
    }

    /// [`Db::write`], keeping `hold` alive until the write is durable or has failed: whatever must
    /// not end before the write does (a stream reservation) goes with the write, not with the
    /// caller's future, which a client hanging up may drop at any await.
    pub async fn write_holding<H: Send + 'static>(&self, batch: Batch, hold: H) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let kv = self.kv.clone();
        tokio::task::spawn_blocking(move || {
            let written = kv.write(batch);
            drop(hold);
            written
        })
        .await
        .map_err(|e| StorageError::Engine(format!("write task failed: {e}")))?
    }

    pub fn flush(&self) -> Result<()> {
        self.kv.flush()
    }
}

pub fn encode_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serialising our own record types cannot fail: they hold no maps with non-string keys.
    serde_json::to_vec(value).unwrap_or_default()
}

pub fn decode_json<T: serde::de::DeserializeOwned>(cf: Cf, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt {
        cf: cf.name(),
        reason: e.to_string(),
    })
}

pub fn decode_u64(cf: Cf, bytes: &[u8]) -> Result<u64> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StorageError::Corrupt {
            cf: cf.name(),
            reason: format!("expected 8 bytes, found {}", bytes.len()),
        })
}
