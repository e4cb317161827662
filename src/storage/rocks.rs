//! The RocksDB implementation of `KeyValue`: one column family per keyspace, a shared bounded block
//! cache, LZ4 for recent data and ZSTD for the bottom level, synced WAL writes.

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode,
    Options, ReadOptions, WriteBatch, WriteOptions, DB,
};

use super::{schema, Batch, Cf, KeyValue, KvIter, Op, Result, StorageError};

pub struct RocksDb {
    db: DB,
}

fn engine(e: rocksdb::Error) -> StorageError {
    StorageError::Engine(e.into_string())
}

impl RocksDb {
    /// Opens (creating if needed) the database at `path` with a block cache of `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self> {
        let cache = Cache::new_lru_cache(cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);

        let cf_options = || {
            let mut o = Options::default();
            o.set_block_based_table_factory(&table);
            o.set_compression_type(DBCompressionType::Lz4);
            o.set_bottommost_compression_type(DBCompressionType::Zstd);
            // Small memtables: most keyspaces are tiny, and idle memory matters more than
            // write amplification for them.
            o.set_write_buffer_size(8 << 20);
            o.set_max_write_buffer_number(3);
            o.set_level_compaction_dynamic_level_bytes(true);
            o
        };

        let mut db_opts = cf_options();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.increase_parallelism(2);
        db_opts.set_max_open_files(512);
        db_opts.set_keep_log_file_num(3);
        db_opts.set_max_total_wal_size(64 << 20);
        // One budget for the memtables of all keyspaces together: with ~50 keyspaces, per-keyspace
        // buffers alone could hold a gigabyte. Past it, the largest memtable is flushed.
        db_opts.set_db_write_buffer_size(32 << 20);
        db_opts.set_enable_pipelined_write(true);

        let descriptors = schema::KEYSPACES
            .iter()
            .map(|k| ColumnFamilyDescriptor::new(k.name, cf_options()));
        let db = DB::open_cf_descriptors(&db_opts, path, descriptors).map_err(engine)?;
        Ok(Self { db })
    }

    fn handle(&self, cf: Cf) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(cf.name())
            .ok_or_else(|| StorageError::Engine(format!("missing column family {}", cf.name())))
    }

    fn iter<'a>(&'a self, cf: Cf, mode: IteratorMode<'_>, opts: ReadOptions) -> KvIter<'a> {
        let handle = match self.handle(cf) {
            Ok(h) => h,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        Box::new(
            self.db
                .iterator_cf_opt(handle, opts, mode)
                .map(|r| r.map(|(k, v)| (k.into_vec(), v.into_vec())).map_err(engine)),
        )
    }
}

impl KeyValue for RocksDb {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.handle(cf)?, key).map_err(engine)
    }

    fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let handle = self.handle(cf)?;
        self.db
            .batched_multi_get_cf(handle, keys.iter(), false)
            .into_iter()
            .map(|r| r.map(|v| v.map(|s| s.to_vec())).map_err(engine))
            .collect()
    }

    fn write(&self, batch: Batch) -> Result<()> {
        let mut wb = WriteBatch::default();
        for op in batch.ops {
            match op {
                Op::Put(cf, k, v) => wb.put_cf(self.handle(cf)?, k, v),
                Op::Delete(cf, k) => wb.delete_cf(self.handle(cf)?, k),
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(wb, &opts).map_err(engine)
    }

    fn scan_prefix<'a>(&'a self, cf: Cf, prefix: &[u8]) -> KvIter<'a> {
        let mut opts = ReadOptions::default();
        if let Some(upper) = prefix_successor(prefix) {
            opts.set_iterate_upper_bound(upper);
        }
        let prefix_owned = prefix.to_vec();
        Box::new(
            self.iter(cf, IteratorMode::From(prefix, Direction::Forward), opts)
                .take_while(move |r| match r {
                    Ok((k, _)) => k.starts_with(&prefix_owned),
                    Err(_) => true,
                }),
        )
    }

    fn scan_range<'a>(&'a self, cf: Cf, from: &[u8], to: &[u8], reverse: bool) -> KvIter<'a> {
        let mut opts = ReadOptions::default();
        if reverse {
            // (to, from]: seek to `from` backwards, stop at or below `to`.
            let mut lower = to.to_vec();
            lower.push(0);
            opts.set_iterate_lower_bound(lower);
            self.iter(cf, IteratorMode::From(from, Direction::Reverse), opts)
        } else {
            opts.set_iterate_upper_bound(to.to_vec());
            self.iter(cf, IteratorMode::From(from, Direction::Forward), opts)
        }
    }

    fn flush(&self) -> Result<()> {
        for k in schema::KEYSPACES {
            self.db.flush_cf(self.handle(k.cf)?).map_err(engine)?;
        }
        Ok(())
    }
}

/// The smallest key greater than every key starting with `prefix`, if one exists.
pub(super) fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut upper = prefix.to_vec();
    while let Some(last) = upper.pop() {
        if last < u8::MAX {
            upper.push(last + 1);
            return Some(upper);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, RocksDb) {
        let dir = tempfile::tempdir().unwrap();
        let db = RocksDb::open(dir.path(), 1 << 20).unwrap();
        (dir, db)
    }

    #[test]
    fn batch_is_atomic_and_scans_are_ordered() {
        let (_dir, db) = open();
        let mut b = Batch::new();
        for i in [3u64, 1, 2] {
            b.put(Cf::Users, i.to_be_bytes(), vec![i as u8]);
        }
        b.put(Cf::Devices, b"x".to_vec(), b"y".to_vec());
        db.write(b).unwrap();
        let keys: Vec<u64> = db
            .scan_prefix(Cf::Users, &[])
            .map(|r| u64::from_be_bytes(r.unwrap().0.try_into().unwrap()))
            .collect();
        assert_eq!(keys, vec![1, 2, 3]);
        let rev: Vec<u64> = db
            .scan_range(Cf::Users, &3u64.to_be_bytes(), &1u64.to_be_bytes(), true)
            .map(|r| u64::from_be_bytes(r.unwrap().0.try_into().unwrap()))
            .collect();
        assert_eq!(rev, vec![3, 2]);
        let fwd: Vec<u64> = db
            .scan_range(Cf::Users, &1u64.to_be_bytes(), &3u64.to_be_bytes(), false)
            .map(|r| u64::from_be_bytes(r.unwrap().0.try_into().unwrap()))
            .collect();
        assert_eq!(fwd, vec![1, 2]);
        assert_eq!(db.get(Cf::Devices, b"x").unwrap(), Some(b"y".to_vec()));
    }

    #[test]
    fn prefix_scan_stops_at_prefix_end() {
        let (_dir, db) = open();
        let mut b = Batch::new();
        b.put(Cf::Devices, b"ab1".to_vec(), b"".to_vec());
        b.put(Cf::Devices, b"ab\xff".to_vec(), b"".to_vec());
        b.put(Cf::Devices, b"ac".to_vec(), b"".to_vec());
        db.write(b).unwrap();
        let n = db.scan_prefix(Cf::Devices, b"ab").count();
        assert_eq!(n, 2);
        assert_eq!(prefix_successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(b"\xff"), None);
    }
}
