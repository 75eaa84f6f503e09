//! Read-only counts over the stored events, for the tools (the load
//! generator's check, the bench): the table of each kind of event is known
//! here, next to the code that writes it.

use sqlx::PgPool;
use wa_payload::EventKey;

use crate::StoreError;

/// How many of `keys` are stored, each looked up in the table that holds
/// its kind.
pub async fn count_stored(pool: &PgPool, keys: &[EventKey<'_>]) -> Result<usize, StoreError> {
    let mut wamids = Vec::new();
    let (mut status_wamids, mut statuses, mut participants) = (Vec::new(), Vec::new(), Vec::new());
    let (mut groups, mut others) = (Vec::new(), Vec::new());
    for key in keys {
        match *key {
            EventKey::Message { wamid } => wamids.push(wamid),
            EventKey::Status {
                wamid,
                status,
                participant,
            } => {
                status_wamids.push(wamid);
                statuses.push(status);
                participants.push(participant);
            }
            EventKey::Group { key } => groups.push(key),
            EventKey::Other { key } => others.push(key),
        }
    }
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE wamid = ANY($1)")
        .bind(&wamids)
        .fetch_one(pool)
        .await?;
    let statuses: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM message_statuses s
         JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS k(wamid, status, participant)
              USING (wamid, status, participant)",
    )
    .bind(&status_wamids)
    .bind(&statuses)
    .bind(&participants)
    .fetch_one(pool)
    .await?;
    let groups_found: i64 =
        sqlx::query_scalar("SELECT count(*) FROM group_events WHERE event_key = ANY($1)")
            .bind(&groups)
            .fetch_one(pool)
            .await?;
    let others_found: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE event_key = ANY($1)")
            .bind(&others)
            .fetch_one(pool)
            .await?;
    Ok(usize::try_from(messages + statuses + groups_found + others_found).unwrap_or(0))
}

/// Rows of `messages` and `message_statuses` together (the bench's progress).
pub async fn count_messages_and_statuses(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM message_statuses)",
    )
    .fetch_one(pool)
    .await?)
}
