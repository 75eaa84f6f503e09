//! One contact across identities. Meta names a user by phone number
//! (`wa_id`), by business-scoped user id (`user_id`, BSUID), or by both, and
//! the same person may appear first one way and later the other. Every
//! sighting is resolved, inside the storing transaction, to one `contacts`
//! record whose `contact_key` never changes, so that per-contact order
//! survives the switch.
//!
//! The rule, applied to each sighting in Meta-timestamp order:
//!
//! - Look the record up by `user_id` and by `wa_id` (both unique).
//! - Neither found: create one, keyed by the `user_id`, else the `wa_id`.
//! - One found (or both the same): it is the contact; an id it lacks is
//!   linked to it. An id it already holds with another value is not
//!   replaced (the first link wins; counted as a conflict).
//! - Two found, one by phone number without a BSUID, one by BSUID without a
//!   phone number: the same person seen two ways. They merge: the record
//!   first seen (Meta time; ties by key) survives with both ids, the other
//!   keeps its key as a tombstone (`merged_into`, no ids).
//! - Two found that cannot be one person (the number's record has another
//!   BSUID): the BSUID's record is the contact; the number stays where it is
//!   (a conflict).
//! - Profile name, username and parent BSUID move only forward in Meta's
//!   time; first and last seen are the earliest and latest sighting.
//!
//! Concurrency: the transaction first locks the records holding its ids, in
//! key order; a record that another batch is merging or linking is waited
//! for and seen as that batch left it. Ids that no record holds (about to be
//! created or linked) also get a transaction-scoped advisory lock each,
//! taken in one sorted order, and the records are read again under them.
//! Creating, linking and merging the same ids is therefore serialized; the
//! unique indexes back it up. An established contact costs no advisory lock,
//! so a batch holds only as many as it has new ids (the lock table is
//! shared and bounded by `max_locks_per_transaction`).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use foldhash::{HashMap, HashSet};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, Postgres};
use wa_payload::Contact;

/// How many times a new record's key is retried with a suffix when another
/// record already holds it (a tombstone, or an id edited by hand).
const KEY_ATTEMPTS: usize = 5;

/// A user named by an event, at the event's Meta timestamp.
pub(crate) struct Sighting<'a> {
    pub(crate) contact: &'a Contact,
    pub(crate) at: Option<DateTime<Utc>>,
}

/// What resolving one batch did to the contacts table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ContactChanges {
    pub created: u64,
    /// An id added to a record that lacked it.
    pub linked: u64,
    /// Two records folded into one.
    pub merged: u64,
    /// An id left out because another record, or another value, holds it.
    pub conflicts: u64,
}

/// Where each id of the batch resolved to.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    by_user: HashMap<String, String>,
    by_wa: HashMap<String, String>,
}

impl Directory {
    /// The contact record of a user as an event names them: by BSUID first
    /// (the BSUID is the person), else by phone number.
    pub(crate) fn key_of(&self, contact: &Contact) -> Option<&str> {
        let by_user = contact.user_id.as_ref().and_then(|u| self.by_user.get(u));
        let by_wa = || contact.wa_id.as_ref().and_then(|w| self.by_wa.get(w));
        by_user.or_else(by_wa).map(String::as_str)
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct Record {
    contact_key: String,
    wa_id: Option<String>,
    user_id: Option<String>,
    parent_user_id: Option<String>,
    username: Option<String>,
    profile_name: Option<String>,
    first_seen_at: Option<DateTime<Utc>>,
    last_seen_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Unchanged,
    Changed,
    New,
    /// Folded into the record `into`; one that existed becomes a tombstone.
    Merged {
        existed: bool,
        into: String,
    },
}

struct Entry {
    record: Record,
    state: State,
}

/// Resolves every sighting and writes what changed. Sightings without any
/// id are skipped.
pub(crate) async fn resolve(
    tx: &mut PgConnection,
    sightings: &[Sighting<'_>],
) -> Result<(Directory, ContactChanges), sqlx::Error> {
    let mut sightings: Vec<&Sighting<'_>> = sightings
        .iter()
        .filter(|s| s.contact.wa_id.is_some() || s.contact.user_id.is_some())
        .collect();
    if sightings.is_empty() {
        return Ok((Directory::default(), ContactChanges::default()));
    }
    // Forward-only fields: apply the batch in Meta's order (unknown times first).
    sightings.sort_by_key(|s| s.at);

    // Each id once: `= ANY` over repeats costs an index probe per element.
    let wa_ids: Vec<&str> = sightings
        .iter()
        .filter_map(|s| s.contact.wa_id.as_deref())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let user_ids: Vec<&str> = sightings
        .iter()
        .filter_map(|s| s.contact.user_id.as_deref())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut found = lock_records(tx, &wa_ids, &user_ids).await?;
    // Ids no record holds may be about to be created or linked by another
    // batch too: only these need an advisory lock (so an established
    // contact costs none), and the records are read again once they are held.
    let held_wa_ids: HashSet<&str> = found.iter().filter_map(|r| r.wa_id.as_deref()).collect();
    let held_user_ids: HashSet<&str> = found.iter().filter_map(|r| r.user_id.as_deref()).collect();
    let new_wa_ids: Vec<&str> = wa_ids
        .iter()
        .copied()
        .filter(|id| !held_wa_ids.contains(id))
        .collect();
    let new_user_ids: Vec<&str> = user_ids
        .iter()
        .copied()
        .filter(|id| !held_user_ids.contains(id))
        .collect();
    if !new_wa_ids.is_empty() || !new_user_ids.is_empty() {
        lock_ids(tx, &new_wa_ids, &new_user_ids).await?;
        found = lock_records(tx, &wa_ids, &user_ids).await?;
    }

    let mut book = Book::default();
    for record in found {
        book.add(record, State::Unchanged);
    }
    for sighting in sightings {
        let key = book.resolve(sighting.contact);
        book.absorb(&key, sighting);
    }
    book.write(tx).await?;
    Ok((book.directory, book.changes))
}

/// The records holding any of the ids, locked in key order.
async fn lock_records(
    tx: &mut PgConnection,
    wa_ids: &[&str],
    user_ids: &[&str],
) -> Result<Vec<Record>, sqlx::Error> {
    sqlx::query_as(
        "SELECT contact_key, wa_id, user_id, parent_user_id, username, profile_name,
                first_seen_at, last_seen_at
         FROM contacts
         WHERE wa_id = ANY($1) OR user_id = ANY($2)
         ORDER BY contact_key
         FOR UPDATE",
    )
    .bind(wa_ids)
    .bind(user_ids)
    .fetch_all(&mut *tx)
    .await
}

/// Transaction-scoped advisory locks on the ids, in one sorted order.
async fn lock_ids(
    tx: &mut PgConnection,
    wa_ids: &[&str],
    user_ids: &[&str],
) -> Result<(), sqlx::Error> {
    let mut locks: Vec<i64> = wa_ids
        .iter()
        .map(|id| lock_id("wa_id", id))
        .chain(user_ids.iter().map(|id| lock_id("user_id", id)))
        .collect();
    locks.sort_unstable();
    locks.dedup();
    sqlx::query("SELECT pg_advisory_xact_lock(k) FROM UNNEST($1::int8[]) AS k")
        .bind(&locks)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

fn lock_id(kind: &str, id: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(b"wa-ingest contact ")
        .chain_update(kind.as_bytes())
        .chain_update(b":")
        .chain_update(id.as_bytes())
        .finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// The records of one batch, in memory until written back.
#[derive(Default)]
struct Book {
    entries: BTreeMap<String, Entry>,
    directory: Directory,
    changes: ContactChanges,
}

impl Book {
    fn add(&mut self, record: Record, state: State) {
        let key = record.contact_key.clone();
        if let Some(wa_id) = &record.wa_id {
            self.directory.by_wa.insert(wa_id.clone(), key.clone());
        }
        if let Some(user_id) = &record.user_id {
            self.directory.by_user.insert(user_id.clone(), key.clone());
        }
        self.entries.insert(key, Entry { record, state });
    }

    fn record(&self, key: &str) -> &Record {
        &self.entries[key].record
    }

    fn touch(&mut self, key: &str) -> &mut Record {
        let entry = self
            .entries
            .get_mut(key)
            .expect("a resolved key is in the book");
        if entry.state == State::Unchanged {
            entry.state = State::Changed;
        }
        &mut entry.record
    }

    /// The key of the record `contact` belongs to, after creating, linking
    /// or merging as the rule says.
    fn resolve(&mut self, contact: &Contact) -> String {
        let wa_id = contact.wa_id.as_deref();
        let user_id = contact.user_id.as_deref();
        let by_user = user_id.and_then(|u| self.directory.by_user.get(u)).cloned();
        let by_wa = wa_id.and_then(|w| self.directory.by_wa.get(w)).cloned();
        match (by_user, by_wa) {
            (None, None) => self.create(wa_id, user_id),
            (Some(key), None) => {
                if let Some(wa_id) = wa_id {
                    self.link_wa_id(&key, wa_id);
                }
                key
            }
            (None, Some(key)) => match user_id {
                None => key,
                Some(user_id) if self.record(&key).user_id.is_none() => {
                    let record = self.touch(&key);
                    record.user_id = Some(user_id.to_owned());
                    self.directory
                        .by_user
                        .insert(user_id.to_owned(), key.clone());
                    self.changes.linked += 1;
                    key
                }
                // The number belongs to another BSUID: a new person.
                Some(user_id) => {
                    self.changes.conflicts += 1;
                    self.create(None, Some(user_id))
                }
            },
            (Some(by_user), Some(by_wa)) if by_user == by_wa => by_user,
            (Some(by_user), Some(by_wa)) => {
                let mergeable =
                    self.record(&by_wa).user_id.is_none() && self.record(&by_user).wa_id.is_none();
                if mergeable {
                    self.merge(&by_user, &by_wa)
                } else {
                    self.changes.conflicts += 1;
                    by_user
                }
            }
        }
    }

    fn create(&mut self, wa_id: Option<&str>, user_id: Option<&str>) -> String {
        let key = user_id.or(wa_id).expect("a sighting has an id").to_owned();
        let record = Record {
            contact_key: key.clone(),
            wa_id: wa_id.map(str::to_owned),
            user_id: user_id.map(str::to_owned),
            parent_user_id: None,
            username: None,
            profile_name: None,
            first_seen_at: None,
            last_seen_at: None,
        };
        self.add(record, State::New);
        self.changes.created += 1;
        key
    }

    fn link_wa_id(&mut self, key: &str, wa_id: &str) {
        match self.record(key).wa_id.as_deref() {
            Some(held) if held == wa_id => {}
            Some(_) => self.changes.conflicts += 1,
            None => {
                self.touch(key).wa_id = Some(wa_id.to_owned());
                self.directory
                    .by_wa
                    .insert(wa_id.to_owned(), key.to_owned());
                self.changes.linked += 1;
            }
        }
    }

    /// Folds two records of one person; returns the survivor's key.
    fn merge(&mut self, a: &str, b: &str) -> String {
        let first_seen = |r: &Record| {
            (
                r.first_seen_at.is_none(),
                r.first_seen_at,
                r.contact_key.clone(),
            )
        };
        let (survivor, loser) = if first_seen(self.record(a)) <= first_seen(self.record(b)) {
            (a.to_owned(), b.to_owned())
        } else {
            (b.to_owned(), a.to_owned())
        };
        let gone = self
            .entries
            .get_mut(&loser)
            .expect("merged records are in the book");
        let existed = gone.state != State::New;
        gone.state = State::Merged {
            existed,
            into: survivor.clone(),
        };
        let gone = gone.record.clone();
        let kept = self.touch(&survivor);
        kept.wa_id = kept.wa_id.take().or(gone.wa_id.clone());
        kept.user_id = kept.user_id.take().or(gone.user_id.clone());
        kept.parent_user_id = kept.parent_user_id.take().or(gone.parent_user_id.clone());
        if is_newer(gone.last_seen_at, kept.last_seen_at) {
            kept.username = gone.username.clone().or(kept.username.take());
            kept.profile_name = gone.profile_name.clone().or(kept.profile_name.take());
        }
        kept.first_seen_at = earliest(kept.first_seen_at, gone.first_seen_at);
        kept.last_seen_at = kept.last_seen_at.max(gone.last_seen_at);
        for id in [gone.wa_id.as_ref(), gone.user_id.as_ref()]
            .into_iter()
            .flatten()
        {
            for map in [&mut self.directory.by_wa, &mut self.directory.by_user] {
                if map.get(id) == Some(&loser) {
                    map.insert(id.clone(), survivor.clone());
                }
            }
        }
        self.changes.merged += 1;
        survivor
    }

    /// What a sighting says about the contact, forward-only in Meta's time.
    fn absorb(&mut self, key: &str, sighting: &Sighting<'_>) {
        let contact = sighting.contact;
        let current = self.record(key);
        let newer = is_newer(sighting.at, current.last_seen_at);
        let replaces = |ours: &Option<String>, theirs: &Option<String>| {
            theirs.is_some() && ours != theirs && (ours.is_none() || newer)
        };
        let parent = replaces(&current.parent_user_id, &contact.parent_user_id);
        let username = replaces(&current.username, &contact.username);
        let name = replaces(&current.profile_name, &contact.profile_name);
        let first_seen = earliest(current.first_seen_at, sighting.at);
        let last_seen = current.last_seen_at.max(sighting.at);
        if !(parent || username || name)
            && first_seen == current.first_seen_at
            && last_seen == current.last_seen_at
        {
            return;
        }
        let record = self.touch(key);
        if parent {
            record.parent_user_id.clone_from(&contact.parent_user_id);
        }
        if username {
            record.username.clone_from(&contact.username);
        }
        if name {
            record.profile_name.clone_from(&contact.profile_name);
        }
        record.first_seen_at = first_seen;
        record.last_seen_at = last_seen;
    }

    /// Tombstones first (they give their ids up), then updates, then new
    /// records: each statement sees the ids the previous one freed.
    async fn write(&mut self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        let mut tombstones: Vec<(&str, &str)> = Vec::new();
        let mut updated: Vec<&Record> = Vec::new();
        let mut created: Vec<Record> = Vec::new();
        for (key, entry) in &self.entries {
            match &entry.state {
                State::Merged { existed: true, .. } => tombstones.push((key, self.survivor(key))),
                State::Merged { existed: false, .. } | State::Unchanged => {}
                State::Changed => updated.push(&entry.record),
                State::New => created.push(entry.record.clone()),
            }
        }
        if !tombstones.is_empty() {
            let keys: Vec<&str> = tombstones.iter().map(|t| t.0).collect();
            let into: Vec<&str> = tombstones.iter().map(|t| t.1).collect();
            sqlx::query(
                "UPDATE contacts c
                 SET wa_id = NULL, user_id = NULL, parent_user_id = NULL,
                     merged_into = u.survivor, updated_at = now()
                 FROM UNNEST($1::text[], $2::text[]) AS u(key, survivor)
                 WHERE c.contact_key = u.key",
            )
            .bind(&keys)
            .bind(&into)
            .execute(&mut *tx)
            .await?;
            // Group memberships follow the person; where both records have
            // one for a group, the later change (Meta time) wins.
            sqlx::query(concat!(
                "WITH moved AS (
                     DELETE FROM group_members g
                     USING UNNEST($1::text[], $2::text[]) AS u(key, survivor)
                     WHERE g.contact_key = u.key
                     RETURNING g.group_id, u.survivor, g.is_member, g.wa_id, g.user_id,
                               g.changed_at, g.event_key)
                 INSERT INTO group_members AS m (group_id, contact_key, is_member, wa_id,
                                                 user_id, changed_at, event_key)
                 SELECT DISTINCT ON (group_id, survivor) *
                 FROM moved
                 ORDER BY group_id, survivor, changed_at DESC, event_key DESC
                 ",
                later_membership_wins!()
            ))
            .bind(&keys)
            .bind(&into)
            .execute(&mut *tx)
            .await?;
        }
        if !updated.is_empty() {
            let columns = Columns::of(updated.iter().copied());
            let update = sqlx::query_as(
                "UPDATE contacts c
                 SET wa_id = u.wa_id, user_id = u.user_id, parent_user_id = u.parent_user_id,
                     username = u.username, profile_name = u.profile_name,
                     first_seen_at = u.first_seen_at, last_seen_at = u.last_seen_at,
                     updated_at = now()
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::text[], $7::timestamptz[], $8::timestamptz[])
                      AS u(key, wa_id, user_id, parent_user_id, username, profile_name,
                           first_seen_at, last_seen_at)
                 WHERE c.contact_key = u.key
                 RETURNING c.contact_key",
            );
            let _: Vec<(String,)> = columns.bind(update).fetch_all(&mut *tx).await?;
        }
        for attempt in 0..KEY_ATTEMPTS {
            if created.is_empty() {
                return Ok(());
            }
            let columns = Columns::of(created.iter());
            let insert = sqlx::query_as(
                "INSERT INTO contacts (contact_key, wa_id, user_id, parent_user_id, username,
                                       profile_name, first_seen_at, last_seen_at)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                      $6::text[], $7::timestamptz[], $8::timestamptz[])
                 ON CONFLICT (contact_key) DO NOTHING
                 RETURNING contact_key",
            );
            let inserted: Vec<(String,)> = columns.bind(insert).fetch_all(&mut *tx).await?;
            let inserted: HashSet<String> = inserted.into_iter().map(|(key,)| key).collect();
            created.retain(|r| !inserted.contains(&r.contact_key));
            // Another record holds the key without holding these ids: give
            // the new one a key of its own.
            for record in &mut created {
                let taken = std::mem::take(&mut record.contact_key);
                record.contact_key = format!("{taken}~{}", attempt + 2);
                for map in [&mut self.directory.by_wa, &mut self.directory.by_user] {
                    for value in map.values_mut().filter(|v| **v == taken) {
                        value.clone_from(&record.contact_key);
                    }
                }
            }
        }
        if created.is_empty() {
            Ok(())
        } else {
            Err(sqlx::Error::InvalidArgument(format!(
                "no free contact_key for {} new contact(s) after {KEY_ATTEMPTS} attempts",
                created.len()
            )))
        }
    }

    /// Where a merged record went, following merges of merges.
    fn survivor<'k>(&'k self, mut key: &'k str) -> &'k str {
        while let Some(Entry {
            state: State::Merged { into, .. },
            ..
        }) = self.entries.get(key)
        {
            key = into;
        }
        key
    }
}

/// Records as one array per column, for `UNNEST`.
struct Columns<'a> {
    keys: Vec<&'a str>,
    wa_ids: Vec<Option<&'a str>>,
    user_ids: Vec<Option<&'a str>>,
    parent_user_ids: Vec<Option<&'a str>>,
    usernames: Vec<Option<&'a str>>,
    profile_names: Vec<Option<&'a str>>,
    first_seen: Vec<Option<DateTime<Utc>>>,
    last_seen: Vec<Option<DateTime<Utc>>>,
}

/// A statement over `UNNEST` of the eight record columns, in `Columns` order.
type RecordsQuery<'q> =
    sqlx::query::QueryAs<'q, Postgres, (String,), <Postgres as sqlx::Database>::Arguments>;

impl<'a> Columns<'a> {
    fn bind<'q>(&'q self, query: RecordsQuery<'q>) -> RecordsQuery<'q> {
        query
            .bind(&self.keys)
            .bind(&self.wa_ids)
            .bind(&self.user_ids)
            .bind(&self.parent_user_ids)
            .bind(&self.usernames)
            .bind(&self.profile_names)
            .bind(&self.first_seen)
            .bind(&self.last_seen)
    }

    fn of(records: impl Iterator<Item = &'a Record>) -> Self {
        let mut columns = Columns {
            keys: Vec::new(),
            wa_ids: Vec::new(),
            user_ids: Vec::new(),
            parent_user_ids: Vec::new(),
            usernames: Vec::new(),
            profile_names: Vec::new(),
            first_seen: Vec::new(),
            last_seen: Vec::new(),
        };
        for record in records {
            columns.keys.push(&record.contact_key);
            columns.wa_ids.push(record.wa_id.as_deref());
            columns.user_ids.push(record.user_id.as_deref());
            columns
                .parent_user_ids
                .push(record.parent_user_id.as_deref());
            columns.usernames.push(record.username.as_deref());
            columns.profile_names.push(record.profile_name.as_deref());
            columns.first_seen.push(record.first_seen_at);
            columns.last_seen.push(record.last_seen_at);
        }
        columns
    }
}

/// A sighting at `at` is at least as new as what the record last saw
/// (an unknown time is newer only than another unknown time).
fn is_newer(at: Option<DateTime<Utc>>, last: Option<DateTime<Utc>>) -> bool {
    match (at, last) {
        (Some(at), Some(last)) => at >= last,
        (_, None) => true,
        (None, Some(_)) => false,
    }
}

fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(wa_id: Option<&str>, user_id: Option<&str>) -> Contact {
        Contact {
            wa_id: wa_id.map(str::to_owned),
            user_id: user_id.map(str::to_owned),
            ..Contact::default()
        }
    }

    fn existing(key: &str, wa_id: Option<&str>, user_id: Option<&str>, first: i64) -> Record {
        Record {
            contact_key: key.to_owned(),
            wa_id: wa_id.map(str::to_owned),
            user_id: user_id.map(str::to_owned),
            parent_user_id: None,
            username: None,
            profile_name: None,
            first_seen_at: DateTime::from_timestamp(first, 0),
            last_seen_at: DateTime::from_timestamp(first, 0),
        }
    }

    #[test]
    fn phone_then_both_then_bsuid_is_one_record() {
        let mut book = Book::default();
        let first = book.resolve(&user(Some("1555"), None));
        let both = book.resolve(&user(Some("1555"), Some("US.1")));
        let bsuid = book.resolve(&user(None, Some("US.1")));
        assert_eq!(
            (first.as_str(), both.as_str(), bsuid.as_str()),
            ("1555", "1555", "1555")
        );
        assert_eq!(book.changes.created, 1);
        assert_eq!(book.changes.linked, 1);
    }

    #[test]
    fn two_records_of_one_person_merge_into_the_first_seen() {
        let mut book = Book::default();
        book.add(existing("US.1", None, Some("US.1"), 200), State::Unchanged);
        book.add(existing("1555", Some("1555"), None, 100), State::Unchanged);
        let key = book.resolve(&user(Some("1555"), Some("US.1")));
        assert_eq!(key, "1555");
        assert_eq!(book.changes.merged, 1);
        assert_eq!(
            book.directory.key_of(&user(None, Some("US.1"))),
            Some("1555")
        );
        assert_eq!(book.survivor("US.1"), "1555");
        assert_eq!(book.record("1555").user_id.as_deref(), Some("US.1"));
    }

    #[test]
    fn a_number_held_by_another_bsuid_stays_where_it_is() {
        let mut book = Book::default();
        book.add(
            existing("US.1", Some("1555"), Some("US.1"), 100),
            State::Unchanged,
        );
        let key = book.resolve(&user(Some("1555"), Some("US.2")));
        assert_eq!(key, "US.2");
        assert_eq!(book.changes.conflicts, 1);
        assert_eq!(book.record("US.2").wa_id, None);
        assert_eq!(
            book.directory.key_of(&user(Some("1555"), None)),
            Some("US.1")
        );
    }

    #[test]
    fn names_only_move_forward_in_meta_time() {
        let mut book = Book::default();
        let at = |t| DateTime::from_timestamp(t, 0);
        let named = |name: &str| Contact {
            profile_name: Some(name.to_owned()),
            ..user(Some("1555"), None)
        };
        let (new, old) = (named("New"), named("Old"));
        for (contact, t) in [(&new, 200), (&old, 100)] {
            let sighting = Sighting { contact, at: at(t) };
            let key = book.resolve(contact);
            book.absorb(&key, &sighting);
        }
        let record = book.record("1555");
        assert_eq!(record.profile_name.as_deref(), Some("New"));
        assert_eq!(
            (record.first_seen_at, record.last_seen_at),
            (at(100), at(200))
        );
    }
}
