//! Full-text search of rooms' messages, names and topics (`/search`).
//!
//! The text is indexed with tantivy (BM25 ranking, positions for phrases) in
//! `<database.path>/search`. The index is derived data: RocksDB holds the truth and the index can
//! be rebuilt from it, so it is kept out of the storage engine's transactions. Each event's commit
//! writes a `search_queue` row beside it (see [`rooms::Outbox`]); one worker drains the queue off
//! the request path, indexes the events, commits the index and only then deletes the rows. A crash
//! in between indexes some events again, which replaces their documents: nothing is lost and
//! nothing is found twice. Events of encrypted rooms are never indexed, and a redaction drops its
//! target's text. What a search returns is filtered per event by history visibility, so a former
//! member finds only what they could see.

pub mod text;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    ops::Bound,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use ruma::{
    api::client::filter::RoomEventFilter,
    events::{room::member::MembershipState, StateEventType, TimelineEventType},
    CanonicalJsonObject, CanonicalJsonValue, OwnedRoomId, RoomId, UserId,
};
use serde_json::Value as JsonValue;
use tantivy::{
    collector::{Collector, Count, FilterCollector, TopDocs},
    directory::MmapDirectory,
    query::{
        BooleanQuery, ConstScoreQuery, Occur, PhraseQuery, Query, QueryClone, RangeQuery,
        TermQuery, TermSetQuery,
    },
    schema::{Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED},
    DocAddress, Index, IndexReader, IndexWriter, Order, ReloadPolicy, TantivyDocument, Term,
};
use tokio::sync::{watch, Notify};

use self::text::Clause;
use crate::{
    error::{Error, Result},
    service::rooms::{self, history::Viewer},
    storage::{tables, Batch, Db, ShortId, Table},
};

/// Written with every commit of the index: an index without it (new, or from before the queue
/// existed) is filled from every room's timeline once.
const BUILT: &str = "hearth-search-1";

/// Queue rows indexed per commit of the index.
const BATCH: usize = 2_000;

/// The writer (which holds some 12 MB of buffers) is let go after this long without events.
const WRITER_IDLE: Duration = Duration::from_secs(10);

/// Commits of the index are at least this far apart, so a busy server indexes in batches.
const COMMIT_EVERY: Duration = Duration::from_millis(100);

/// At most this many candidates are looked at for one page; a page that filters out more ends
/// early with a `next_batch` to go on from.
const MAX_SCANNED: usize = 5_000;

/// The most results one page returns, whatever the filter asks.
pub const MAX_LIMIT: usize = 100;

/// Which field of an event a match was in (the spec's `keys`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    Body = 1,
    Name = 2,
    Topic = 3,
}

impl Key {
    pub const ALL: [Key; 3] = [Key::Body, Key::Name, Key::Topic];

    /// The key of an event of type `kind`, and the content field holding its text.
    fn of(kind: &str) -> Option<(Key, &'static str)> {
        match kind {
            "m.room.message" => Some((Key::Body, "body")),
            "m.room.name" => Some((Key::Name, "name")),
            "m.room.topic" => Some((Key::Topic, "topic")),
            _ => None,
        }
    }
}

/// The order of results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderBy {
    /// Best match first (BM25).
    Rank,
    /// Newest first.
    Recent,
}

/// Where a page starts, as handed out in `next_batch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cursor {
    /// Ranked results: this many candidates already looked at.
    Skip(u64),
    /// Recent results: candidates older than this stream position.
    Before(u64),
}

impl Cursor {
    pub fn parse(token: &str) -> Option<Cursor> {
        let (tag, n) = token.split_at_checked(1)?;
        let n = n.parse().ok()?;
        match tag {
            "r" => Some(Cursor::Skip(n)),
            "t" => Some(Cursor::Before(n)),
            _ => None,
        }
    }

    pub fn token(self) -> String {
        match self {
            Cursor::Skip(n) => format!("r{n}"),
            Cursor::Before(n) => format!("t{n}"),
        }
    }
}

/// One search, as the client asked it.
pub struct SearchQuery<'a> {
    pub user: &'a UserId,
    pub search_term: &'a str,
    pub keys: &'a [Key],
    pub filter: &'a RoomEventFilter,
    pub order: OrderBy,
    pub cursor: Option<Cursor>,
}

/// One event found.
pub struct Hit {
    pub event: ShortId,
    pub room: ShortId,
    pub room_id: OwnedRoomId,
    /// The BM25 score, for ranked searches.
    pub rank: Option<f64>,
    /// The event in the client format, as the searcher sees it.
    pub json: JsonValue,
}

/// A page of results.
pub struct Found {
    pub hits: Vec<Hit>,
    pub next: Option<Cursor>,
    /// How many indexed events of the searched rooms match (before history visibility).
    pub count: u64,
    /// The words of the results that matched, as written there, for clients to highlight.
    pub highlights: Vec<String>,
}

/// The index's fields.
#[derive(Clone, Copy)]
struct Fields {
    /// The event's short ID, which is also its stream position: identity and recency.
    event: Field,
    room: Field,
    key: Field,
    /// Words as written (folded), with positions, for phrases and exact matches.
    plain: Field,
    /// Stemmed words, so other forms of a word match too.
    stemmed: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let event = b.add_u64_field("event", INDEXED | FAST);
    // FAST: the room is checked per match in the collector (see `search`).
    let room = b.add_u64_field("room", INDEXED | FAST);
    let key = b.add_u64_field("key", INDEXED);
    let text_field = |tokenizer: &str, record: IndexRecordOption| {
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(tokenizer)
                .set_index_option(record),
        )
    };
    let plain = b.add_text_field(
        "plain",
        text_field(text::PLAIN, IndexRecordOption::WithFreqsAndPositions),
    );
    let stemmed = b.add_text_field(
        "stemmed",
        text_field(text::STEMMED, IndexRecordOption::WithFreqs),
    );
    (
        b.build(),
        Fields {
            event,
            room,
            key,
            plain,
            stemmed,
        },
    )
}

fn search_error(e: tantivy::TantivyError) -> Error {
    Error::internal(format!("search index: {e}"))
}

/// Opens the index in `dir`, or makes a new one (an index that cannot be opened, e.g. of another
/// schema, is thrown away: it is rebuilt from the database).
fn open_index(dir: &Path) -> Result<Index> {
    let (schema, _) = schema();
    let open = || -> tantivy::Result<Index> {
        std::fs::create_dir_all(dir)?;
        let directory = MmapDirectory::open(dir)?;
        Index::open_or_create(directory, schema.clone())
    };
    let index = match open() {
        Ok(index) => index,
        Err(e) => {
            tracing::warn!(path = %dir.display(), "search index unreadable, rebuilding it: {e}");
            std::fs::remove_dir_all(dir)
                .map_err(|e| Error::internal(format!("{}: {e}", dir.display())))?;
            open().map_err(search_error)?
        }
    };
    text::register(index.tokenizers());
    Ok(index)
}

pub struct Service {
    db: Db,
    rooms: Arc<rooms::Service>,
    queue: Table<tables::SearchQueue>,
    index: Index,
    reader: IndexReader,
    fields: Fields,
    /// Only the worker writes; the writer lives while there is work (see [`WRITER_IDLE`]).
    writer: Mutex<Option<IndexWriter<TantivyDocument>>>,
    /// Rung when a batch with queue rows is durable.
    queued: Notify,
}

impl Service {
    pub fn new(db: Db, rooms: Arc<rooms::Service>, dir: PathBuf) -> Result<Self> {
        let index = open_index(&dir)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(search_error)?;
        Ok(Self {
            queue: Table::new(&db),
            db,
            rooms,
            reader,
            fields: schema().1,
            index,
            writer: Mutex::new(None),
            queued: Notify::new(),
        })
    }

    /// Indexes queued events until shutdown; first, an index that was never filled is filled
    /// from every room's timeline.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.fill_once()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("search index not filled: {e}"),
            Err(e) => tracing::error!("search index not filled: {e}"),
        }
        let mut last_commit = Instant::now() - COMMIT_EVERY;
        let mut failures = 0u32;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let since = last_commit.elapsed();
            if since < COMMIT_EVERY {
                tokio::select! {
                    _ = tokio::time::sleep(COMMIT_EVERY - since) => {}
                    _ = shutdown.wait_for(|s| *s) => break,
                }
            }
            let this = self.clone();
            let drained = tokio::task::spawn_blocking(move || this.drain())
                .await
                .map_err(Error::internal)
                .and_then(|r| r);
            match drained {
                Ok(0) => {}
                Ok(n) => {
                    failures = 0;
                    last_commit = Instant::now();
                    if n == BATCH {
                        continue;
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = Duration::from_millis(250 << failures.min(8));
                    tracing::warn!("search indexing failed, retrying in {wait:?}: {e}");
                    self.let_go_of_writer().await;
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        _ = shutdown.wait_for(|s| *s) => break,
                    }
                }
            }
            let has_writer = self.writer.lock().is_some();
            let idle = tokio::select! {
                _ = self.queued.notified() => false,
                _ = tokio::time::sleep(WRITER_IDLE), if has_writer => true,
                _ = shutdown.wait_for(|s| *s) => break,
            };
            if idle {
                self.let_go_of_writer().await;
            }
        }
        // Merges in flight finish before the index is let go (a blocking wait).
        let writer = self.writer.lock().take();
        if let Some(writer) = writer {
            let _ = tokio::task::spawn_blocking(move || writer.wait_merging_threads()).await;
        }
    }

    /// Drops the writer, joining its threads off the async workers.
    async fn let_go_of_writer(&self) {
        let writer = self.writer.lock().take();
        if let Some(writer) = writer {
            let _ = tokio::task::spawn_blocking(move || {
                drop(writer);
                // The writer's indexing buffers (megabytes) stay in glibc's arenas otherwise.
                crate::util::release_freed_memory();
            })
            .await;
        }
    }

    /// Queues every timeline event of every room when the index has never been filled (a new
    /// index beside an older database, or one rebuilt after damage).
    fn fill_once(&self) -> Result<()> {
        let metas = self.index.load_metas().map_err(search_error)?;
        if metas.payload.as_deref() == Some(BUILT) {
            return Ok(());
        }
        let (mut queued, mut in_batch) = (0usize, 0usize);
        let mut batch = Batch::new();
        for room in self.rooms.state.all_rooms()? {
            let mut from = 0;
            loop {
                let page = self.rooms.timeline.timeline(room, from, true, 1_000)?;
                let Some(&last) = page.last() else {
                    break;
                };
                for event in page {
                    self.queue.put_in(&mut batch, event, &());
                    queued += 1;
                    in_batch += 1;
                }
                if in_batch >= 10_000 {
                    self.db.kv().write(std::mem::take(&mut batch))?;
                    in_batch = 0;
                }
                from = last;
            }
        }
        self.db.kv().write(batch)?;
        // The queue is durable: the mark can go in now, the worker indexes what was queued.
        let mut writer = self.writer()?;
        let writer = writer
            .as_mut()
            .ok_or_else(|| Error::internal("no index writer"))?;
        let mut commit = writer.prepare_commit().map_err(search_error)?;
        commit.set_payload(BUILT);
        commit.commit().map_err(search_error)?;
        if queued > 0 {
            tracing::info!(
                events = queued,
                "search index: queued the existing timelines"
            );
        }
        Ok(())
    }

    /// The writer, made if there is none.
    fn writer(&self) -> Result<parking_lot::MutexGuard<'_, Option<IndexWriter<TantivyDocument>>>> {
        let mut guard = self.writer.lock();
        if guard.is_none() {
            // One indexing thread at the minimum budget: indexing keeps up with sending
            // without taking the machine's cores or memory.
            *guard = Some(
                self.index
                    .writer_with_num_threads(1, 15_000_000)
                    .map_err(search_error)?,
            );
        }
        Ok(guard)
    }

    /// Indexes up to [`BATCH`] queued events, commits, then deletes their rows. Returns how many.
    fn drain(&self) -> Result<usize> {
        let rows: Vec<ShortId> = self
            .queue
            .iter()
            .keys()
            .take(BATCH)
            .collect::<std::result::Result<_, _>>()?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut guard = self.writer()?;
        let writer = guard
            .as_mut()
            .ok_or_else(|| Error::internal("no index writer"))?;
        let mut encrypted = HashMap::new();
        for &event in &rows {
            if let Err(e) = self.index_event(writer, &mut encrypted, event) {
                // One unreadable event must not stop the rest from being found.
                tracing::warn!(event, "not indexed for search: {e}");
            }
        }
        let mut commit = writer.prepare_commit().map_err(search_error)?;
        commit.set_payload(BUILT);
        commit.commit().map_err(search_error)?;
        drop(guard);
        self.reader.reload().map_err(search_error)?;
        let mut done = Batch::new();
        for event in &rows {
            self.queue.delete_in(&mut done, *event);
        }
        self.db.kv().write(done)?;
        Ok(rows.len())
    }

    /// (Re)indexes one event: its document replaces any earlier one; a redaction re-indexes its
    /// target, which, redacted, has no text left.
    fn index_event(
        &self,
        writer: &IndexWriter<TantivyDocument>,
        encrypted: &mut HashMap<ShortId, bool>,
        event: ShortId,
    ) -> Result<()> {
        let Some(pdu) = self.rooms.events.pdu(event)? else {
            return Ok(());
        };
        if pdu.kind == TimelineEventType::RoomRedaction {
            if let Some(target) = pdu.redacts.as_ref() {
                if let Some(target) = self.rooms.events.event_short(target)? {
                    return self.index_event(writer, encrypted, target);
                }
            }
            return Ok(());
        }
        let kind = pdu.kind.to_string();
        let Some((key, field)) = Key::of(&kind) else {
            return Ok(());
        };
        let Some(meta) = self.rooms.events.event_meta(event)? else {
            return Ok(());
        };
        writer.delete_term(Term::from_field_u64(self.fields.event, event));
        if key != Key::Body && pdu.state_key.as_deref() != Some("") {
            return Ok(());
        }
        let is_encrypted = match encrypted.get(&meta.room) {
            Some(e) => *e,
            None => {
                let e = self
                    .rooms
                    .state
                    .current_state_pdu(meta.room, &StateEventType::RoomEncryption, "")?
                    .is_some();
                encrypted.insert(meta.room, e);
                e
            }
        };
        if is_encrypted || meta.redacted {
            return Ok(());
        }
        let content = pdu.content_value();
        let Some(text) = content.get(field).and_then(JsonValue::as_str) else {
            return Ok(());
        };
        if text.trim().is_empty() {
            return Ok(());
        }
        let mut doc = TantivyDocument::default();
        doc.add_u64(self.fields.event, event);
        doc.add_u64(self.fields.room, meta.room);
        doc.add_u64(self.fields.key, key as u64);
        doc.add_text(self.fields.plain, text);
        doc.add_text(self.fields.stemmed, text);
        writer.add_document(doc).map_err(search_error)?;
        Ok(())
    }

    /// Events queued for indexing and not yet in the index (for tests and the admin API).
    pub fn backlog(&self) -> Result<usize> {
        let mut n = 0;
        for row in self.queue.iter().keys() {
            row?;
            n += 1;
        }
        Ok(n)
    }

    /// The rooms `user` may search: those they are in, and those they left or were banned from
    /// (unless forgotten) up to their leave, the bound given here. History visibility then
    /// narrows each to what they saw.
    fn searchable_rooms(&self, user: &UserId) -> Result<Vec<(ShortId, Option<ShortId>)>> {
        let Some(u) = self.rooms.events.user_short(user)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (room, m) in self.rooms.membership.memberships(u)? {
            match m.membership() {
                MembershipState::Join | MembershipState::Invite => out.push((room, None)),
                MembershipState::Leave | MembershipState::Ban
                    if !self.rooms.membership.is_forgotten(u, room)? =>
                {
                    out.push((room, Some(m.event)));
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// One page of a search (blocking: reads the index and the database).
    pub fn search(&self, q: &SearchQuery<'_>) -> Result<Found> {
        let clauses = text::clauses(q.search_term);
        if clauses.is_empty() {
            return Err(Error::invalid_param(
                "search_term has no words to search for",
            ));
        }
        match (q.order, q.cursor) {
            (OrderBy::Rank, Some(Cursor::Before(_))) | (OrderBy::Recent, Some(Cursor::Skip(_))) => {
                return Err(Error::invalid_param(
                    "next_batch is from a search in another order",
                ))
            }
            _ => {}
        }
        let limit = q
            .filter
            .limit
            .map(|l| usize::try_from(u64::from(l)).unwrap_or(MAX_LIMIT))
            .unwrap_or(10)
            .clamp(1, MAX_LIMIT);

        // The rooms searched: the user's, narrowed by the filter.
        let mut rooms = self.searchable_rooms(q.user)?;
        if let Some(only) = &q.filter.rooms {
            let wanted: HashSet<ShortId> = only
                .iter()
                .filter_map(|r| self.rooms.events.room_short(r).ok().flatten())
                .collect();
            rooms.retain(|(r, _)| wanted.contains(r));
        }
        if !q.filter.not_rooms.is_empty() {
            let unwanted: HashSet<ShortId> = q
                .filter
                .not_rooms
                .iter()
                .filter_map(|r| self.rooms.events.room_short(r).ok().flatten())
                .collect();
            rooms.retain(|(r, _)| !unwanted.contains(r));
        }
        if rooms.is_empty() || q.keys.is_empty() {
            return Ok(Found {
                hits: Vec::new(),
                next: None,
                count: 0,
                highlights: Vec::new(),
            });
        }

        let mut stemmer = text::stemmed();
        let mut stems = HashSet::new();
        let mut words = HashSet::new();
        let mut text_parts: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for clause in &clauses {
            let plain_term = |w: &str| Term::from_field_text(self.fields.plain, w);
            let query: Box<dyn Query> = match clause {
                Clause::Word(w) => {
                    words.insert(w.clone());
                    let mut either: Vec<(Occur, Box<dyn Query>)> = vec![(
                        Occur::Should,
                        Box::new(TermQuery::new(plain_term(w), IndexRecordOption::WithFreqs)),
                    )];
                    if let Some(stem) = text::terms(&mut stemmer, w).pop() {
                        either.push((
                            Occur::Should,
                            Box::new(TermQuery::new(
                                Term::from_field_text(self.fields.stemmed, &stem),
                                IndexRecordOption::WithFreqs,
                            )),
                        ));
                        stems.insert(stem);
                    }
                    Box::new(BooleanQuery::new(either))
                }
                Clause::Phrase(ws) => {
                    words.extend(ws.iter().cloned());
                    Box::new(PhraseQuery::new(ws.iter().map(|w| plain_term(w)).collect()))
                }
            };
            text_parts.push((Occur::Must, query));
        }
        let scope = |extra: Option<Box<dyn Query>>| -> BooleanQuery {
            let mut parts: Vec<(Occur, Box<dyn Query>)> = text_parts
                .iter()
                .map(|(o, q)| (*o, q.box_clone()))
                .collect();
            // Of the rooms the user left, only what came up to their leave (so neither results
            // nor the count tell of what came after). Which rooms at all is the collector's
            // filter: a query clause over every room of the user would read every one of their
            // rooms' documents for each search.
            for (room, until) in &rooms {
                let Some(until) = until else {
                    continue;
                };
                parts.push((
                    Occur::MustNot,
                    Box::new(BooleanQuery::new(vec![
                        (
                            Occur::Must,
                            Box::new(TermQuery::new(
                                Term::from_field_u64(self.fields.room, *room),
                                IndexRecordOption::Basic,
                            )) as Box<dyn Query>,
                        ),
                        (
                            Occur::Must,
                            Box::new(RangeQuery::new(
                                Bound::Excluded(Term::from_field_u64(self.fields.event, *until)),
                                Bound::Unbounded,
                            )),
                        ),
                    ])),
                ));
            }
            if q.keys.len() < Key::ALL.len() {
                parts.push((
                    Occur::Must,
                    Box::new(ConstScoreQuery::new(
                        Box::new(TermSetQuery::new(
                            q.keys
                                .iter()
                                .map(|k| Term::from_field_u64(self.fields.key, *k as u64)),
                        )),
                        0.0,
                    )),
                ));
            }
            if let Some(extra) = extra {
                parts.push((Occur::Must, extra));
            }
            BooleanQuery::new(parts)
        };

        let searcher = self.reader.searcher();
        // Sorted for a binary search per match: cheaper than hashing for a user's rooms.
        let mut searched: Vec<u64> = rooms.iter().map(|(r, _)| *r).collect();
        searched.sort_unstable();
        let searched = Arc::new(searched);
        let in_rooms = move |room: u64| searched.binary_search(&room).is_ok();
        // The count comes with the first page when ranking (one pass); ordered by recency, the
        // page's query is narrower than the count's, which takes a pass of its own.
        let mut count: Option<u64> = None;

        let mut viewers: HashMap<ShortId, Option<Viewer>> = HashMap::new();
        let mut room_ids: HashMap<ShortId, OwnedRoomId> = HashMap::new();
        let mut hits = Vec::new();
        let mut scanned = 0usize;
        let mut cursor = q.cursor.unwrap_or(match q.order {
            OrderBy::Rank => Cursor::Skip(0),
            OrderBy::Recent => Cursor::Before(u64::MAX),
        });
        let chunk = (limit * 2).max(50);
        let mut exhausted = false;
        'pages: while hits.len() < limit && scanned < MAX_SCANNED {
            // Candidates in order: (event, score).
            let candidates: Vec<(ShortId, Option<f32>)> = match cursor {
                Cursor::Skip(skip) => {
                    let skip = usize::try_from(skip).unwrap_or(usize::MAX);
                    let top_docs = TopDocs::with_limit(chunk).and_offset(skip).order_by_score();
                    let top = if count.is_none() {
                        let (n, top) = searcher
                            .search(&scope(None), &in_scope(&in_rooms, (Count, top_docs)))
                            .map_err(search_error)?;
                        count = Some(n as u64);
                        top
                    } else {
                        searcher
                            .search(&scope(None), &in_scope(&in_rooms, top_docs))
                            .map_err(search_error)?
                    };
                    top.into_iter()
                        .filter_map(|(score, addr)| {
                            self.event_of(&searcher, addr).map(|e| (e, Some(score)))
                        })
                        .collect()
                }
                Cursor::Before(before) => {
                    let older = RangeQuery::new(
                        Bound::Unbounded,
                        Bound::Excluded(Term::from_field_u64(self.fields.event, before)),
                    );
                    let top = searcher
                        .search(
                            &scope(Some(Box::new(older))),
                            &in_scope(
                                &in_rooms,
                                TopDocs::with_limit(chunk).order_by_u64_field("event", Order::Desc),
                            ),
                        )
                        .map_err(search_error)?;
                    top.into_iter()
                        .filter_map(|(event, _)| event.map(|e| (e, None)))
                        .collect()
                }
            };
            let got = candidates.len();
            for (event, score) in candidates {
                if hits.len() == limit {
                    break 'pages;
                }
                scanned += 1;
                cursor = match cursor {
                    Cursor::Skip(n) => Cursor::Skip(n + 1),
                    Cursor::Before(_) => Cursor::Before(event),
                };
                if let Some(hit) = self.visible_hit(q, &mut viewers, &mut room_ids, event, score)? {
                    hits.push(hit);
                }
            }
            if got < chunk {
                exhausted = true;
                break;
            }
        }
        let count = match count {
            Some(n) => n,
            None => searcher
                .search(&scope(None), &in_scope(&in_rooms, Count))
                .map_err(search_error)? as u64,
        };
        let highlights = highlights(&hits, &words, &stems, &mut stemmer);
        Ok(Found {
            // A page cut short (full, or too many candidates filtered out) goes on from where it
            // stopped; one that read the last candidate has no next page.
            next: (!exhausted).then_some(cursor),
            hits,
            count,
            highlights,
        })
    }

    /// The event short ID of a found document.
    fn event_of(&self, searcher: &tantivy::Searcher, addr: DocAddress) -> Option<ShortId> {
        searcher
            .segment_reader(addr.segment_ord)
            .fast_fields()
            .u64("event")
            .ok()?
            .first(addr.doc_id)
    }

    /// The hit for a candidate, if the searcher may see it and it passes the filter.
    fn visible_hit(
        &self,
        q: &SearchQuery<'_>,
        viewers: &mut HashMap<ShortId, Option<Viewer>>,
        room_ids: &mut HashMap<ShortId, OwnedRoomId>,
        event: ShortId,
        score: Option<f32>,
    ) -> Result<Option<Hit>> {
        let Some(meta) = self.rooms.events.event_meta(event)? else {
            return Ok(None);
        };
        if meta.redacted {
            return Ok(None);
        }
        let viewer = viewers
            .entry(meta.room)
            .or_insert_with(|| self.rooms.timeline.viewer(q.user, meta.room).ok());
        let Some(viewer) = viewer else {
            return Ok(None);
        };
        if !self.rooms.timeline.can_see(viewer, event)? {
            return Ok(None);
        }
        let room_id = match room_ids.get(&meta.room) {
            Some(r) => r.clone(),
            None => {
                let r = self.rooms.events.room_id_of(meta.room)?;
                room_ids.insert(meta.room, r.clone());
                r
            }
        };
        let Some(json) = self
            .rooms
            .timeline
            .client_event_json(event, &room_id, q.user)?
        else {
            return Ok(None);
        };
        let Some(obj) = json.as_object() else {
            return Ok(None);
        };
        if !crate::service::timeline::event_matches(q.filter, obj) {
            return Ok(None);
        }
        if let Some(want_url) = q.filter.url_filter {
            let has_url = obj
                .get("content")
                .and_then(|c| c.get("url"))
                .is_some_and(JsonValue::is_string);
            if has_url != (want_url == ruma::api::client::filter::UrlFilter::EventsWithUrl) {
                return Ok(None);
            }
        }
        Ok(Some(Hit {
            event,
            room: meta.room,
            room_id,
            rank: score.map(f64::from),
            json,
        }))
    }
}

/// `collector` over the documents of the rooms `in_rooms` accepts (the `room` fast field).
fn in_scope<C, P>(in_rooms: &P, collector: C) -> FilterCollector<C, P, u64>
where
    C: Collector + Send + Sync,
    P: Fn(u64) -> bool + Send + Sync + Clone + 'static,
{
    FilterCollector::new("room".to_owned(), in_rooms.clone(), collector)
}

/// The words of the hits' texts that the query matched, as written there.
fn highlights(
    hits: &[Hit],
    words: &HashSet<String>,
    stems: &HashSet<String>,
    stemmer: &mut tantivy::tokenizer::TextAnalyzer,
) -> Vec<String> {
    let mut out = BTreeSet::new();
    for hit in hits {
        let Some(content) = hit.json.get("content") else {
            continue;
        };
        for field in ["body", "name", "topic"] {
            let Some(text) = content.get(field).and_then(JsonValue::as_str) else {
                continue;
            };
            for (word, from, to) in text::words(text) {
                let matched = words.contains(&word)
                    || text::terms(stemmer, &word)
                        .first()
                        .is_some_and(|s| stems.contains(s));
                if matched {
                    out.insert(text[from..to].to_owned());
                }
            }
        }
    }
    out.extend(words.iter().cloned());
    out.into_iter().collect()
}

impl rooms::Outbox for Service {
    /// Queues the events whose text the index takes (messages, names, topics) and redactions.
    fn queue_in(
        &self,
        batch: &mut Batch,
        _room: ShortId,
        _room_id: &RoomId,
        events: &[(ShortId, &CanonicalJsonObject)],
    ) -> Result<()> {
        for (short, event) in events {
            let kind = match event.get("type") {
                Some(CanonicalJsonValue::String(kind)) => kind.as_str(),
                _ => continue,
            };
            if Key::of(kind).is_some() || kind == "m.room.redaction" {
                self.queue.put_in(batch, *short, &());
            }
        }
        Ok(())
    }

    fn written(&self, _room: ShortId) {
        self.queued.notify_one();
    }
}
