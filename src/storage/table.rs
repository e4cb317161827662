//! Typed tables: a keyspace seen through its key and value codecs. A [`Schema`] names the column
//! family and the codecs (see `tables` for every keyspace); a [`Table`] is the handle services
//! hold, with point reads, batch writes and ordered scans that take and return typed keys and
//! values. No code outside `storage/` sees key bytes.
//!
//! Keys are concatenations of [`Field`]s: fixed-width big-endian numbers, so that scans come out
//! in numeric order, and strings, either last (running to the end of the key) or ended by 0xff
//! (a byte UTF-8 never holds). A tuple of fields is a key; its leading fields are a [`Prefix`].

use std::marker::PhantomData;

use serde::{de::DeserializeOwned, Serialize};

use super::{
    encode_json, rocks::prefix_successor, schema::Cf, Batch, Db, KvIter, Result, StorageError,
};

/// One part of a key.
pub trait Field {
    /// The field as callers pass it.
    type Ref<'a>: Copy;
    /// The field as read back from a key.
    type Owned;
    fn put(value: Self::Ref<'_>, out: &mut Vec<u8>);
    /// Reads the field from the front of `raw`; returns it and what follows.
    fn take(raw: &[u8]) -> Option<(Self::Owned, &[u8])>;
    fn borrow(owned: &Self::Owned) -> Self::Ref<'_>;
}

/// An unsigned number, big-endian and fixed-width so that keys sort numerically.
macro_rules! number_fields {
    ($($name:ident: $t:ty),*) => {$(
        #[doc = concat!("A `", stringify!($t), "`, big-endian.")]
        pub enum $name {}

        impl Field for $name {
            type Ref<'a> = $t;
            type Owned = $t;
            fn put(value: $t, out: &mut Vec<u8>) {
                out.extend_from_slice(&value.to_be_bytes());
            }
            fn take(raw: &[u8]) -> Option<($t, &[u8])> {
                let (head, rest) = raw.split_first_chunk()?;
                Some((<$t>::from_be_bytes(*head), rest))
            }
            fn borrow(owned: &$t) -> $t {
                *owned
            }
        }
    )*};
}
number_fields!(U8: u8, U32: u32, U64: u64);

/// A UTF-8 string running to the end of the key; as a prefix, any leading part of it.
pub enum Str {}

/// A UTF-8 string followed by 0xff, so that fields can follow it.
pub enum Term {}

/// A SHA-256 digest.
pub enum Hash32 {}

fn utf8(raw: &[u8]) -> Option<String> {
    std::str::from_utf8(raw).ok().map(str::to_owned)
}

impl Field for Str {
    type Ref<'a> = &'a str;
    type Owned = String;
    fn put(value: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(value.as_bytes());
    }
    fn take(raw: &[u8]) -> Option<(String, &[u8])> {
        Some((utf8(raw)?, &[]))
    }
    fn borrow(owned: &String) -> &str {
        owned
    }
}

impl Field for Term {
    type Ref<'a> = &'a str;
    type Owned = String;
    fn put(value: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(value.as_bytes());
        out.push(0xff);
    }
    fn take(raw: &[u8]) -> Option<(String, &[u8])> {
        let end = raw.iter().position(|b| *b == 0xff)?;
        Some((utf8(&raw[..end])?, &raw[end + 1..]))
    }
    fn borrow(owned: &String) -> &str {
        owned
    }
}

impl Field for Hash32 {
    type Ref<'a> = &'a [u8; 32];
    type Owned = [u8; 32];
    fn put(value: &[u8; 32], out: &mut Vec<u8>) {
        out.extend_from_slice(value);
    }
    fn take(raw: &[u8]) -> Option<([u8; 32], &[u8])> {
        let (head, rest) = raw.split_first_chunk()?;
        Some((*head, rest))
    }
    fn borrow(owned: &[u8; 32]) -> &[u8; 32] {
        owned
    }
}

/// How a keyspace's keys are laid out: one field, or a tuple of fields.
pub trait KeyCodec {
    type Key<'a>: Copy;
    type Owned;
    fn encode(key: Self::Key<'_>, out: &mut Vec<u8>);
    /// The key of `raw`, which must be all of it.
    fn decode(raw: &[u8]) -> Option<Self::Owned>;
    fn borrow(owned: &Self::Owned) -> Self::Key<'_>;
}

impl<F: Field> KeyCodec for F {
    type Key<'a> = F::Ref<'a>;
    type Owned = F::Owned;
    fn encode(key: F::Ref<'_>, out: &mut Vec<u8>) {
        F::put(key, out);
    }
    fn decode(raw: &[u8]) -> Option<F::Owned> {
        match F::take(raw)? {
            (v, []) => Some(v),
            _ => None,
        }
    }
    fn borrow(owned: &F::Owned) -> F::Ref<'_> {
        F::borrow(owned)
    }
}

/// `P`, the leading fields of a key, for a prefix scan.
pub trait Prefix<P> {
    fn encode_prefix(prefix: P, out: &mut Vec<u8>);
}

macro_rules! tuple_key {
    ($($f:ident $v:ident),*) => {
        impl<$($f: Field),*> KeyCodec for ($($f,)*) {
            type Key<'a> = ($($f::Ref<'a>,)*);
            type Owned = ($($f::Owned,)*);
            fn encode(($($v,)*): Self::Key<'_>, out: &mut Vec<u8>) {
                $($f::put($v, out);)*
            }
            fn decode(raw: &[u8]) -> Option<Self::Owned> {
                $(let ($v, raw) = $f::take(raw)?;)*
                raw.is_empty().then_some(($($v,)*))
            }
            fn borrow(($($v,)*): &Self::Owned) -> Self::Key<'_> {
                ($($f::borrow($v),)*)
            }
        }
    };
}
tuple_key!(A a, B b);
tuple_key!(A a, B b, C c);
tuple_key!(A a, B b, C c, D d);
tuple_key!(A a, B b, C c, D d, E e);
tuple_key!(A a, B b, C c, D d, E e, F f);

/// `(A, B, ...)` is a prefix of the tuple key `[A, B, ..., Z]`.
macro_rules! tuple_prefix {
    ([$($all:ident),*] $($f:ident $v:ident),*) => {
        impl<'a, $($all: Field),*> Prefix<($($f::Ref<'a>,)*)> for ($($all,)*) {
            fn encode_prefix(($($v,)*): ($($f::Ref<'a>,)*), out: &mut Vec<u8>) {
                $($f::put($v, out);)*
            }
        }
    };
}
tuple_prefix!([A, B] A a);
tuple_prefix!([A, B] A a, B b);
tuple_prefix!([A, B, C] A a);
tuple_prefix!([A, B, C] A a, B b);
tuple_prefix!([A, B, C] A a, B b, C c);
tuple_prefix!([A, B, C, D] A a);
tuple_prefix!([A, B, C, D] A a, B b);
tuple_prefix!([A, B, C, D] A a, B b, C c);
tuple_prefix!([A, B, C, D, E, F] A a);
tuple_prefix!([A, B, C, D, E, F] A a, B b);

/// How a keyspace's values are laid out.
pub trait ValueCodec {
    type Value;
    fn encode(value: &Self::Value) -> Vec<u8>;
    fn decode(raw: &[u8]) -> Result<Self::Value, String>;
}

/// A record as JSON.
pub struct Json<T>(PhantomData<fn() -> T>);

impl<T: Serialize + DeserializeOwned> ValueCodec for Json<T> {
    type Value = T;
    fn encode(value: &T) -> Vec<u8> {
        encode_json(value)
    }
    fn decode(raw: &[u8]) -> Result<T, String> {
        serde_json::from_slice(raw).map_err(|e| e.to_string())
    }
}

/// No value: the key is the fact.
pub enum Empty {}

impl ValueCodec for Empty {
    type Value = ();
    fn encode(_: &()) -> Vec<u8> {
        Vec::new()
    }
    fn decode(_: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// Bytes the owner of the keyspace gives meaning to (canonical event JSON, for one).
pub enum Raw {}

impl ValueCodec for Raw {
    type Value = Vec<u8>;
    fn encode(value: &Vec<u8>) -> Vec<u8> {
        value.clone()
    }
    fn decode(raw: &[u8]) -> Result<Vec<u8>, String> {
        Ok(raw.to_vec())
    }
}

/// A value laid out as a key is: fixed-width numbers and strings (a pointer to another row).
pub struct Packed<K>(PhantomData<fn() -> K>);

impl<K: KeyCodec> ValueCodec for Packed<K> {
    type Value = K::Owned;
    fn encode(value: &K::Owned) -> Vec<u8> {
        let mut out = Vec::new();
        K::encode(K::borrow(value), &mut out);
        out
    }
    fn decode(raw: &[u8]) -> Result<K::Owned, String> {
        K::decode(raw).ok_or_else(|| format!("unexpected layout ({} bytes)", raw.len()))
    }
}

/// A stream position (u64 BE) followed by `V`: the position of the row's last change.
pub struct Positioned<V>(PhantomData<fn() -> V>);

impl<V: ValueCodec> ValueCodec for Positioned<V> {
    type Value = (u64, V::Value);
    fn encode((pos, value): &(u64, V::Value)) -> Vec<u8> {
        let mut out = pos.to_be_bytes().to_vec();
        out.extend_from_slice(&V::encode(value));
        out
    }
    fn decode(raw: &[u8]) -> Result<(u64, V::Value), String> {
        let (pos, rest) = raw
            .split_first_chunk()
            .ok_or("shorter than a stream position")?;
        Ok((u64::from_be_bytes(*pos), V::decode(rest)?))
    }
}

/// A keyspace: its column family and how its keys and values are laid out.
pub trait Schema: 'static {
    const CF: Cf;
    type Key: KeyCodec;
    type Value: ValueCodec;
}

type Key<'a, S> = <<S as Schema>::Key as KeyCodec>::Key<'a>;
type OwnedKey<S> = <<S as Schema>::Key as KeyCodec>::Owned;
type Value<S> = <<S as Schema>::Value as ValueCodec>::Value;

/// A keyspace as services use it.
pub struct Table<S> {
    pub(super) db: Db,
    schema: PhantomData<fn() -> S>,
}

impl<S> Clone for Table<S> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            schema: PhantomData,
        }
    }
}

fn corrupt<S: Schema>(reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        cf: S::CF.name(),
        reason: reason.into(),
    }
}

impl<S: Schema> Table<S> {
    pub fn new(db: &Db) -> Self {
        Self {
            db: db.clone(),
            schema: PhantomData,
        }
    }

    /// The bytes of a key.
    pub(super) fn key(key: Key<'_, S>) -> Vec<u8> {
        let mut out = Vec::new();
        S::Key::encode(key, &mut out);
        out
    }

    fn prefix<P>(prefix: P) -> Vec<u8>
    where
        S::Key: Prefix<P>,
    {
        let mut out = Vec::new();
        S::Key::encode_prefix(prefix, &mut out);
        out
    }

    fn value(raw: &[u8]) -> Result<Value<S>> {
        S::Value::decode(raw).map_err(corrupt::<S>)
    }

    pub fn get(&self, key: Key<'_, S>) -> Result<Option<Value<S>>> {
        self.db
            .get(S::CF, &Self::key(key))?
            .map(|v| Self::value(&v))
            .transpose()
    }

    /// Values of many keys, in the order of `keys`, in one read.
    pub fn get_many(&self, keys: &[Key<'_, S>]) -> Result<Vec<Option<Value<S>>>> {
        let raw: Vec<Vec<u8>> = keys.iter().map(|k| Self::key(*k)).collect();
        let refs: Vec<&[u8]> = raw.iter().map(Vec::as_slice).collect();
        self.db
            .multi_get(S::CF, &refs)?
            .into_iter()
            .map(|v| v.map(|v| Self::value(&v)).transpose())
            .collect()
    }

    pub fn contains(&self, key: Key<'_, S>) -> Result<bool> {
        Ok(self.db.get(S::CF, &Self::key(key))?.is_some())
    }

    pub fn put_in(&self, batch: &mut Batch, key: Key<'_, S>, value: &Value<S>) {
        batch.put(S::CF, Self::key(key), S::Value::encode(value));
    }

    pub fn delete_in(&self, batch: &mut Batch, key: Key<'_, S>) {
        batch.delete(S::CF, Self::key(key));
    }

    /// Deletes a row a scan returned.
    pub fn delete_row_in(&self, batch: &mut Batch, key: &OwnedKey<S>) {
        self.delete_in(batch, S::Key::borrow(key));
    }

    /// Every row, in key order.
    pub fn iter(&self) -> Rows<'_, S> {
        Rows::new(self.db.scan_prefix(S::CF, &[]))
    }

    /// The rows whose keys start with `prefix`, in key order.
    pub fn scan<P>(&self, prefix: P) -> Rows<'_, S>
    where
        S::Key: Prefix<P>,
    {
        Rows::new(self.db.scan_prefix(S::CF, &Self::prefix(prefix)))
    }

    /// The rows whose key begins with a string (`Str` or `Term`) that starts with `start`: every
    /// term beginning with "ali", say. Only for keyspaces whose key begins with a string.
    pub fn scan_str_prefix(&self, start: &str) -> Rows<'_, S> {
        Rows::new(self.db.scan_prefix(S::CF, start.as_bytes()))
    }

    /// The rows whose keys start with (and are longer than) `prefix`, last key first.
    pub fn scan_rev<P>(&self, prefix: P) -> Rows<'_, S>
    where
        S::Key: Prefix<P>,
    {
        let start = Self::prefix(prefix);
        // From the first key past the prefix's rows (skipped if it exists) down to the prefix.
        let end = prefix_successor(&start).unwrap_or_else(|| vec![0xff; start.len() + 64]);
        let rows = self.db.scan_range(S::CF, &end, &start, true);
        let under = move |r: &Result<(Vec<u8>, Vec<u8>)>| match r {
            Ok((k, _)) => k.starts_with(&start),
            Err(_) => true,
        };
        let under2 = under.clone();
        Rows::new(Box::new(
            rows.skip_while(move |r| !under(r)).take_while(under2),
        ))
    }

    /// Whether any row's key starts with `prefix`.
    pub fn any<P>(&self, prefix: P) -> Result<bool>
    where
        S::Key: Prefix<P>,
    {
        let mut rows = self.db.scan_prefix(S::CF, &Self::prefix(prefix));
        Ok(rows.next().transpose()?.is_some())
    }

    /// The rows with keys in `[from, to)`, in key order.
    pub fn range(&self, from: Key<'_, S>, to: Key<'_, S>) -> Rows<'_, S> {
        Rows::new(
            self.db
                .scan_range(S::CF, &Self::key(from), &Self::key(to), false),
        )
    }

    /// The rows with keys in `(down_to, from]`, from `from` down: a walk backwards that stops
    /// before `down_to`.
    pub fn range_rev(&self, from: Key<'_, S>, down_to: Key<'_, S>) -> Rows<'_, S> {
        Rows::new(
            self.db
                .scan_range(S::CF, &Self::key(from), &Self::key(down_to), true),
        )
    }

    /// Adds the deletion of every row under `prefix` to `batch`; returns how many there were.
    pub fn delete_prefix_in<P>(&self, batch: &mut Batch, prefix: P) -> Result<u64>
    where
        S::Key: Prefix<P>,
    {
        let mut n = 0;
        for row in self.db.scan_prefix(S::CF, &Self::prefix(prefix)) {
            batch.delete(S::CF, row?.0);
            n += 1;
        }
        Ok(n)
    }
}

/// Rows of a scan, decoded: `(key, value)`.
pub struct Rows<'a, S> {
    inner: KvIter<'a>,
    schema: PhantomData<fn() -> S>,
}

impl<'a, S: Schema> Rows<'a, S> {
    fn new(inner: KvIter<'a>) -> Self {
        Self {
            inner,
            schema: PhantomData,
        }
    }

    fn decode_key(raw: &[u8]) -> Result<OwnedKey<S>> {
        S::Key::decode(raw).ok_or_else(|| corrupt::<S>(format!("key of {} bytes", raw.len())))
    }

    /// Only the keys, leaving the values undecoded.
    pub fn keys(self) -> impl Iterator<Item = Result<OwnedKey<S>>> + 'a {
        self.inner.map(|r| Self::decode_key(&r?.0))
    }

    /// Only the values.
    pub fn values(self) -> impl Iterator<Item = Result<Value<S>>> + 'a {
        self.map(|r| r.map(|(_, v)| v))
    }
}

impl<S: Schema> Iterator for Rows<'_, S> {
    type Item = Result<(OwnedKey<S>, Value<S>)>;

    fn next(&mut self) -> Option<Self::Item> {
        let row = self.inner.next()?;
        Some(row.and_then(|(k, v)| Ok((Self::decode_key(&k)?, Table::<S>::value(&v)?))))
    }
}
