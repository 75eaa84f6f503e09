//! "Did we get it?": one contact's or one group's stored messages and their
//! status timeline. Message text is read only when the operator reveals it.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Messages shown per conversation, newest first.
pub(crate) const MAX_MESSAGES: i64 = 200;
/// Status rows shown, newest first.
pub(crate) const MAX_STATUSES: i64 = 1000;

#[derive(Debug, Clone)]
pub(crate) enum Subject {
    /// A contact record, with the records merged into it.
    Contact {
        key: String,
        wa_id: Option<String>,
        user_id: Option<String>,
        keys: Vec<String>,
    },
    Group {
        id: String,
    },
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Message {
    pub(crate) wamid: String,
    pub(crate) direction: String,
    pub(crate) message_type: String,
    pub(crate) phone_number_id: Option<String>,
    pub(crate) meta_timestamp: Option<DateTime<Utc>>,
    pub(crate) stored_at: DateTime<Utc>,
    pub(crate) latest_status: Option<String>,
    /// Only when revealed.
    pub(crate) text: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct StatusRow {
    pub(crate) wamid: String,
    pub(crate) status: String,
    pub(crate) participant: String,
    pub(crate) meta_timestamp: Option<DateTime<Utc>>,
    pub(crate) stored_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub(crate) struct Conversation {
    pub(crate) subject: Subject,
    pub(crate) messages: Vec<Message>,
    pub(crate) statuses: Vec<StatusRow>,
}

#[derive(sqlx::FromRow)]
struct ContactRow {
    contact_key: String,
    wa_id: Option<String>,
    user_id: Option<String>,
    merged_into: Option<String>,
}

/// Finds whom `who` names: a group id (`group:` prefix optional), a
/// contact key, a phone number (`wa_id`) or a BSUID (`user_id`).
pub(crate) async fn find(db: &PgPool, who: &str) -> Result<Option<Subject>, sqlx::Error> {
    let who = who.trim();
    if who.is_empty() {
        return Ok(None);
    }
    if let Some(group) = who.strip_prefix("group:") {
        return Ok(Some(Subject::Group {
            id: group.to_owned(),
        }));
    }
    let contact: Option<ContactRow> = sqlx::query_as(
        "SELECT contact_key, wa_id, user_id, merged_into FROM contacts
         WHERE contact_key = $1 OR wa_id = $1 OR user_id = $1
         ORDER BY (merged_into IS NULL) DESC LIMIT 1",
    )
    .bind(who)
    .fetch_optional(db)
    .await?;
    if let Some(ContactRow {
        contact_key,
        wa_id,
        user_id,
        merged_into,
    }) = contact
    {
        // A tombstone points at the record that holds the person now.
        let key = merged_into.unwrap_or(contact_key);
        let keys: Vec<String> = sqlx::query_scalar(
            "SELECT contact_key FROM contacts WHERE contact_key = $1 OR merged_into = $1",
        )
        .bind(&key)
        .fetch_all(db)
        .await?;
        return Ok(Some(Subject::Contact {
            key,
            wa_id,
            user_id,
            keys,
        }));
    }
    let group: Option<String> =
        sqlx::query_scalar("SELECT group_id FROM messages WHERE group_id = $1 LIMIT 1")
            .bind(who)
            .fetch_optional(db)
            .await?;
    Ok(group.map(|id| Subject::Group { id }))
}

/// The text of a message as a person reads it: the body, a caption, or nothing.
const TEXT: &str = "COALESCE(m.raw->'text'->>'body', m.raw->(m.message_type)->>'caption',
                             m.raw->'interactive'->'button_reply'->>'title',
                             m.raw->'button'->>'text')";

pub(crate) async fn load(
    db: &PgPool,
    subject: Subject,
    reveal: bool,
) -> Result<Conversation, sqlx::Error> {
    let text = if reveal { TEXT } else { "NULL::text" };
    let (filter, keys): (&str, Vec<String>) = match &subject {
        Subject::Contact { keys, .. } => (
            "m.contact_key = ANY($1) AND m.group_id IS NULL",
            keys.clone(),
        ),
        Subject::Group { id } => ("m.group_id = ANY($1)", vec![id.clone()]),
    };
    let mut messages: Vec<Message> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT m.wamid, m.direction, m.message_type, m.phone_number_id,
                m.meta_timestamp, m.stored_at, l.status AS latest_status, {text} AS text
         FROM messages m LEFT JOIN message_latest_status l USING (wamid)
         WHERE {filter}
         ORDER BY m.meta_timestamp DESC NULLS LAST, m.wamid DESC LIMIT {MAX_MESSAGES}"
    )))
    .bind(&keys)
    .fetch_all(db)
    .await?;
    messages.reverse();
    let wamids: Vec<&str> = messages.iter().map(|m| m.wamid.as_str()).collect();
    // Statuses of messages the business sent are not in `messages`: they
    // are found by their recipient (or group) as well as by wamid.
    let by = match &subject {
        Subject::Contact { .. } => "contact_key",
        Subject::Group { .. } => "group_id",
    };
    let mut statuses: Vec<StatusRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT wamid, status, participant, meta_timestamp, stored_at FROM message_statuses
         WHERE {by} = ANY($1) OR wamid = ANY($2)
         ORDER BY meta_timestamp DESC NULLS LAST, stored_at DESC LIMIT {MAX_STATUSES}"
    )))
    .bind(&keys)
    .bind(&wamids)
    .fetch_all(db)
    .await?;
    statuses.reverse();
    Ok(Conversation {
        subject,
        messages,
        statuses,
    })
}
