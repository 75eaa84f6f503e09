//! Migration 0003 on a database that the previous schema filled: every row
//! kept, per-participant uniqueness in force, contacts folded by the
//! identity rule, and applying it again (by `wa-ingest migrate` or by hand)
//! changes nothing.

use wa_e2e::TestEnv;

/// The last migration of the schema before groups and BSUIDs.
const PREVIOUS_SCHEMA: i64 = 2;

const OLD_ROWS: &str = r#"
INSERT INTO messages (wamid, direction, contact_key, wa_id, message_type, meta_timestamp, raw)
VALUES ('wamid.in.1', 'inbound', '15550001', '15550001', 'text', to_timestamp(1700000001), '{}'),
       ('wamid.in.2', 'inbound', 'US.1', '15550001', 'text', to_timestamp(1700000002), '{}');
INSERT INTO message_statuses (wamid, status, meta_timestamp, recipient_id, contact_key, raw)
VALUES ('wamid.out.1', 'sent', to_timestamp(1700000010), '15550001', '15550001', '{}'),
       ('wamid.out.1', 'delivered', to_timestamp(1700000011), '15550001', '15550001', '{}'),
       ('wamid.out.1', 'read', to_timestamp(1700000012), '15550001', '15550001', '{}'),
       -- The one group receipt the old key let through.
       ('wamid.group.1', 'delivered', to_timestamp(1700000020), 'GROUP', 'GROUP', '{}');
INSERT INTO message_latest_status (wamid, status, status_rank, meta_timestamp)
VALUES ('wamid.out.1', 'read', 3, to_timestamp(1700000012));
-- One person twice: first by number, later by BSUID with the number.
INSERT INTO contacts (contact_key, wa_id, user_id, profile_name, first_seen_at, last_seen_at)
VALUES ('15550001', '15550001', NULL, 'Old name', to_timestamp(1700000001), to_timestamp(1700000001)),
       ('US.1', '15550001', 'US.1', 'New name', to_timestamp(1700000002), to_timestamp(1700000002)),
       ('15550002', '15550002', NULL, 'Someone else', to_timestamp(1700000003), to_timestamp(1700000003));
INSERT INTO webhook_events (event_key, field, raw) VALUES ('event:abc', 'account_update', '{}');
INSERT INTO outbox (event_id, event_type, contact_key, wamid, payload)
VALUES ('msg:wamid.in.1', 'message.created', '15550001', 'wamid.in.1', '{}');
INSERT INTO outbox_contacts (contact_key) VALUES ('15550001');
"#;

const COUNTS: &str = "SELECT (SELECT count(*) FROM messages) || '/' ||
        (SELECT count(*) FROM message_statuses) || '/' ||
        (SELECT count(*) FROM message_latest_status) || '/' ||
        (SELECT count(*) FROM contacts) || '/' ||
        (SELECT count(*) FROM webhook_events) || '/' ||
        (SELECT count(*) FROM outbox) || '/' ||
        (SELECT count(*) FROM outbox_contacts)";

async fn counts(env: &TestEnv) -> String {
    sqlx::query_scalar(COUNTS)
        .fetch_one(&env.db)
        .await
        .expect("counts")
}

/// Each contact as `key wa_id user_id name merged_into` (`-` for NULL).
async fn contacts(env: &TestEnv) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT concat_ws(' ', contact_key, coalesce(wa_id, '-'), coalesce(user_id, '-'),
                          coalesce(profile_name, '-'), coalesce(merged_into, '-'))
         FROM contacts ORDER BY contact_key",
    )
    .fetch_all(&env.db)
    .await
    .expect("contacts")
}

fn run_migrate_binary(env: &TestEnv) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wa-ingest"))
        .arg("migrate")
        .env("DATABASE_URL", &env.database_url)
        .env("LOG_FORMAT", "json")
        .output()
        .expect("run wa-ingest migrate");
    assert!(
        output.status.success(),
        "wa-ingest migrate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn the_migration_keeps_the_previous_rows_enforces_per_participant_uniqueness_and_runs_twice()
{
    let env = TestEnv::unmigrated().await;
    wa_store::MIGRATOR
        .run_to(PREVIOUS_SCHEMA, &env.db)
        .await
        .expect("the previous schema applies");
    sqlx::raw_sql(OLD_ROWS)
        .execute(&env.db)
        .await
        .expect("rows in the previous schema");
    let before = counts(&env).await;
    assert_eq!(before, "2/4/1/3/1/1/1");

    run_migrate_binary(&env);

    // Rows kept: the same counts; old receipts keep participant ''.
    assert_eq!(counts(&env).await, before);
    assert_eq!(
        env.count("SELECT count(*) FROM message_statuses WHERE participant = ''")
            .await,
        4
    );
    // The new uniqueness: one row per participant, and still one per
    // (wamid, status) for 1:1 statuses.
    let insert = "INSERT INTO message_statuses (wamid, status, participant, raw)
                  SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::jsonb[])
                  ON CONFLICT (wamid, status, participant) DO NOTHING";
    let stored = sqlx::query(insert)
        .bind([
            "wamid.group.1",
            "wamid.group.1",
            "wamid.group.1",
            "wamid.out.1",
        ])
        .bind(["delivered", "delivered", "read", "sent"])
        .bind(["15550009", "US.2", "15550009", ""])
        .bind(vec![serde_json::json!({}); 4])
        .execute(&env.db)
        .await
        .expect("receipts");
    assert_eq!(
        stored.rows_affected(),
        3,
        "three new receipts, one duplicate"
    );
    let duplicate = sqlx::query(
        "INSERT INTO message_statuses (wamid, status, participant, raw)
         VALUES ('wamid.group.1', 'delivered', 'US.2', '{}')",
    )
    .execute(&env.db)
    .await
    .expect_err("a duplicate receipt is refused");
    assert!(
        duplicate.to_string().contains("message_statuses_pkey"),
        "{duplicate}"
    );

    // One person, two old rows: folded into the one seen first, which
    // takes the BSUID and the newer name; the other stays as a tombstone.
    assert_eq!(
        contacts(&env).await,
        [
            "15550001 15550001 US.1 New name -",
            "15550002 15550002 - Someone else -",
            "US.1 - - New name 15550001",
        ]
    );
    let taken = sqlx::query("INSERT INTO contacts (contact_key, wa_id) VALUES ('x', '15550001')")
        .execute(&env.db)
        .await
        .expect_err("a wa_id belongs to one record");
    assert!(taken.to_string().contains("contacts_wa_id_key"), "{taken}");

    // Twice: `wa-ingest migrate` again is a no-op, and so is the file
    // applied again by hand.
    let applied = "SELECT string_agg(version::text || ':' || checksum::text, ',' ORDER BY version)
                   FROM _sqlx_migrations";
    let history: String = sqlx::query_scalar(applied)
        .fetch_one(&env.db)
        .await
        .expect("history");
    let after = counts(&env).await;
    let folded = contacts(&env).await;
    run_migrate_binary(&env);
    sqlx::raw_sql(include_str!(
        "../../migrations/0003_groups_and_identities.sql"
    ))
    .execute(&env.db)
    .await
    .expect("the migration applies again without harm");
    let again: String = sqlx::query_scalar(applied)
        .fetch_one(&env.db)
        .await
        .expect("history");
    assert_eq!(again, history);
    assert_eq!(counts(&env).await, after);
    assert_eq!(contacts(&env).await, folded);
}
