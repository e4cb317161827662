//! The user directory: whom a user can find to start a chat with (`/user_directory/search`).
//!
//! Each known user has an entry (a local user's profile name and avatar, a remote user's from
//! their latest join) and a row per term: the folded words (lowercase, accents stripped) of the
//! name and of the user ID. A search reads the users whose terms start with the longest word of
//! the query, keeps those every word matches, and shows those the searcher may see: who shares a
//! room with them or is in a public room (the spec's rule), or every local user with
//! `user_directory.search_all_users`. Entries are written with the change they follow: a
//! profile change in its write, a membership in its event's commit (see [`rooms::Outbox`]).

use std::collections::{BTreeSet, HashMap, HashSet};

use ruma::{
    events::{room::member::MembershipState, StateEventType},
    CanonicalJsonObject, OwnedServerName, OwnedUserId, RoomId, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;
use unicode_normalization::{char::is_combining_mark, UnicodeNormalization};

use crate::{
    error::{Error, Result},
    service::rooms,
    storage::{tables, Batch, Db, ShortId, Table},
};

/// Users read from the term index for one search; a query matching more says `limited`.
const MAX_CANDIDATES: usize = 5_000;

/// The most results one search returns, whatever the client asks.
pub const MAX_LIMIT: usize = 100;

/// The row that says the directory was built from what the database held before it existed.
const BUILT: ShortId = 0;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
}

impl DirEntry {
    /// The name and avatar in a member event's or profile's content.
    pub fn from_content(content: &JsonValue) -> Self {
        let field = |name: &str| {
            content
                .get(name)
                .and_then(JsonValue::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        Self {
            display_name: field("displayname"),
            avatar_url: field("avatar_url"),
        }
    }
}

/// Lowercase, compatibility-decomposed, accents dropped: "Zoë" and "ZOE" are both "zoe".
pub fn fold(s: &str) -> String {
    // Most names and every user ID are ASCII: nothing to decompose, nothing to strip.
    if s.is_ascii() {
        return s.to_ascii_lowercase();
    }
    s.nfkd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The folded words of `s`: runs of letters and digits.
pub fn words(s: &str) -> Vec<String> {
    runs(&fold(s)).map(str::to_owned).collect()
}

/// The runs of letters and digits of an already folded string.
fn runs(folded: &str) -> impl Iterator<Item = &str> {
    folded
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

/// Every term a user is found by.
fn terms_of(user_id: &str, entry: &DirEntry) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = words(user_id).into_iter().collect();
    if let Some(name) = &entry.display_name {
        out.extend(words(name));
    }
    out
}

/// One result.
pub struct Found {
    pub user_id: OwnedUserId,
    pub entry: DirEntry,
}

pub struct Service {
    db: Db,
    entries: Table<tables::UserDirectory<DirEntry>>,
    terms: Table<tables::UserDirectoryTerms>,
    server_name: OwnedServerName,
    search_all_users: bool,
}

impl Service {
    pub fn new(db: Db, server_name: OwnedServerName, search_all_users: bool) -> Self {
        Self {
            entries: Table::new(&db),
            terms: Table::new(&db),
            db,
            server_name,
            search_all_users,
        }
    }

    /// Sets a user's entry in `batch`, replacing the terms of the old one.
    pub fn set_in(
        &self,
        batch: &mut Batch,
        user: ShortId,
        user_id: &str,
        entry: &DirEntry,
    ) -> Result<()> {
        let old = self.entries.get(user)?;
        if old.as_ref() == Some(entry) {
            return Ok(());
        }
        let new_terms = terms_of(user_id, entry);
        if let Some(old) = old {
            for t in terms_of(user_id, &old).difference(&new_terms) {
                self.terms.delete_in(batch, (t.as_str(), user));
            }
        }
        for t in &new_terms {
            self.terms.put_in(batch, (t.as_str(), user), &());
        }
        self.entries.put_in(batch, user, entry);
        Ok(())
    }

    /// Removes a user (a deactivated account) in `batch`.
    pub fn remove_in(&self, batch: &mut Batch, user: ShortId, user_id: &str) -> Result<()> {
        if let Some(old) = self.entries.get(user)? {
            for t in terms_of(user_id, &old) {
                self.terms.delete_in(batch, (t.as_str(), user));
            }
            self.entries.delete_in(batch, user);
        }
        Ok(())
    }

    /// Whether the directory holds what the database held before it existed.
    pub fn is_built(&self) -> Result<bool> {
        Ok(self.entries.get(BUILT)?.is_some())
    }

    /// Fills the directory from the accounts and rooms the database holds, once: a database
    /// from before the directory existed. Local users by their profiles, remote users by their
    /// current joins.
    pub async fn build_once(
        &self,
        rooms: &rooms::Service,
        local: impl IntoIterator<Item = (ShortId, OwnedUserId, DirEntry)>,
    ) -> Result<()> {
        if self.entries.get(BUILT)?.is_some() {
            return Ok(());
        }
        let mut batch = Batch::new();
        let mut count = 0usize;
        for (user, user_id, entry) in local {
            self.set_in(&mut batch, user, user_id.as_str(), &entry)?;
            count += 1;
        }
        let mut seen: HashSet<ShortId> = HashSet::new();
        for room in rooms.state.all_rooms()? {
            for (user, m) in rooms.membership.members(room)? {
                if m.membership() != MembershipState::Join || !seen.insert(user) {
                    continue;
                }
                let user_id = rooms.events.user_id_of(user)?;
                if user_id.server_name() == self.server_name {
                    continue;
                }
                let content = rooms
                    .state
                    .current_state_pdu(room, &StateEventType::RoomMember, user_id.as_str())?
                    .map(|p| p.content_value())
                    .unwrap_or_default();
                self.set_in(
                    &mut batch,
                    user,
                    user_id.as_str(),
                    &DirEntry::from_content(&content),
                )?;
                count += 1;
                if count.is_multiple_of(1_000) {
                    self.db.write(std::mem::take(&mut batch)).await?;
                }
            }
        }
        self.entries.put_in(&mut batch, BUILT, &DirEntry::default());
        self.db.write(batch).await?;
        tracing::info!(users = count, "user directory built");
        Ok(())
    }

    /// Users matching `term` whom `searcher` may see, best first, at most `limit`; and whether
    /// there were more.
    pub fn search(
        &self,
        rooms: &rooms::Service,
        searcher: ShortId,
        term: &str,
        limit: usize,
    ) -> Result<(Vec<Found>, bool)> {
        let query = words(term);
        let Some(driver) = query.iter().max_by_key(|w| w.len()) else {
            return Err(Error::invalid_param(
                "search_term must contain a letter or digit",
            ));
        };
        let limit = limit.clamp(1, MAX_LIMIT);
        let mut candidates: Vec<ShortId> = Vec::new();
        let mut seen = HashSet::new();
        let mut capped = false;
        for row in self.terms.scan_str_prefix(driver).keys() {
            let (_, user) = row?;
            if seen.insert(user) {
                if candidates.len() >= MAX_CANDIDATES {
                    capped = true;
                    break;
                }
                candidates.push(user);
            }
        }
        let mine: HashSet<ShortId> = rooms
            .membership
            .rooms_of(searcher, &MembershipState::Join)?
            .into_iter()
            .collect();
        let mut public: HashMap<ShortId, bool> = HashMap::new();
        let folded_term = fold(term.trim());
        let mut found: Vec<(u32, String, Found)> = Vec::new();
        // Two batched reads for all candidates rather than two point reads each.
        let entries = self.entries.get_many(&candidates)?;
        let user_ids = rooms.events.user_ids_of(&candidates)?;
        for ((user, entry), user_id) in candidates.into_iter().zip(entries).zip(user_ids) {
            let (Some(entry), Some(user_id)) = (entry, user_id) else {
                continue;
            };
            let name = entry.display_name.as_deref().map(fold).unwrap_or_default();
            let id = fold(user_id.as_str());
            let starts_a_word = |q: &str| runs(&name).chain(runs(&id)).any(|w| w.starts_with(q));
            if !query.iter().all(|q| starts_a_word(q)) {
                continue;
            }
            let mut shared = false;
            let mut in_public = false;
            for (room, m) in rooms.membership.memberships(user)? {
                if m.membership() != MembershipState::Join {
                    continue;
                }
                if mine.contains(&room) {
                    shared = true;
                    break;
                }
                if !in_public {
                    in_public = match public.get(&room) {
                        Some(p) => *p,
                        None => {
                            let p = is_public(rooms, room)?;
                            public.insert(room, p);
                            p
                        }
                    };
                }
            }
            let local = user_id.server_name() == self.server_name;
            if !(shared || in_public || (self.search_all_users && local) || user == searcher) {
                continue;
            }
            // Who shares a room comes first, then names that start as typed, then the rest.
            let score = u32::from(shared) * 4
                + u32::from(name.starts_with(&folded_term)) * 2
                + u32::from(fold(user_id.localpart()).starts_with(&folded_term));
            let key = if name.is_empty() {
                user_id.as_str().to_owned()
            } else {
                name
            };
            found.push((score, key, Found { user_id, entry }));
        }
        found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let limited = capped || found.len() > limit;
        found.truncate(limit);
        Ok((found.into_iter().map(|(_, _, f)| f).collect(), limited))
    }
}

/// A room anyone may join or read: its members are in the directory for everyone.
fn is_public(rooms: &rooms::Service, room: ShortId) -> Result<bool> {
    let field = |kind: StateEventType, name: &str| -> Result<Option<String>> {
        Ok(rooms
            .state
            .current_state_pdu(room, &kind, "")?
            .and_then(|p| {
                p.content_value()
                    .get(name)
                    .and_then(JsonValue::as_str)
                    .map(str::to_owned)
            }))
    };
    Ok(
        field(StateEventType::RoomJoinRules, "join_rule")?.as_deref() == Some("public")
            || field(StateEventType::RoomHistoryVisibility, "history_visibility")?.as_deref()
                == Some("world_readable"),
    )
}

impl rooms::Outbox for Service {
    fn queue_in(
        &self,
        _batch: &mut Batch,
        _room: ShortId,
        _room_id: &RoomId,
        _events: &[(ShortId, &CanonicalJsonObject)],
    ) -> Result<()> {
        Ok(())
    }

    /// A remote user's join names them as the directory shows them; local users are shown by
    /// their profile (see `profiles`).
    fn member_in(
        &self,
        batch: &mut Batch,
        user: ShortId,
        user_id: &str,
        membership: &MembershipState,
        content: &JsonValue,
    ) {
        if *membership != MembershipState::Join {
            return;
        }
        let Ok(parsed) = UserId::parse(user_id) else {
            return;
        };
        if parsed.server_name() == self.server_name {
            return;
        }
        if let Err(e) = self.set_in(batch, user, user_id, &DirEntry::from_content(content)) {
            tracing::warn!(%user_id, "user directory not updated: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_and_other_scripts_fold_alike() {
        assert_eq!(fold("@Alice.Smith:Example.ORG"), "@alice.smith:example.org");
        assert_eq!(fold("ZOË Ångström"), "zoe angstrom");
        assert_eq!(fold("Zoe Angstrom"), "zoe angstrom");
        assert_eq!(words("Zoë-Anne O'Brien"), ["zoe", "anne", "o", "brien"]);
    }
}
