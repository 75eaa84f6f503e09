-- WhatsApp groups and business-scoped user ids (BSUID).
--
-- Safe to apply again by hand: every statement is guarded (IF NOT EXISTS,
-- catalog checks, merges that find nothing the second time), so running
-- this file twice changes nothing. No table is rewritten: new columns are
-- nullable or carry a constant default, and existing rows stay as they are.

-- Per-participant receipts. A group message gets one delivered and one read
-- per participant, all with the same wamid and status: the participant
-- (BSUID, else phone number) joins the key. 1:1 statuses and a group
-- message's own sent/failed keep participant '' and their old identity.
ALTER TABLE message_statuses ADD COLUMN IF NOT EXISTS participant text NOT NULL DEFAULT '';
ALTER TABLE message_statuses ADD COLUMN IF NOT EXISTS group_id text;
ALTER TABLE message_statuses ADD COLUMN IF NOT EXISTS recipient_parent_user_id text;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'message_statuses'::regclass
          AND contype = 'p'
          AND conkey = ARRAY[
              (SELECT attnum FROM pg_attribute WHERE attrelid = 'message_statuses'::regclass AND attname = 'wamid'),
              (SELECT attnum FROM pg_attribute WHERE attrelid = 'message_statuses'::regclass AND attname = 'status'),
              (SELECT attnum FROM pg_attribute WHERE attrelid = 'message_statuses'::regclass AND attname = 'participant')
          ]::int2[]
    ) THEN
        -- Builds the new index from the existing rows; the table itself is
        -- not rewritten.
        ALTER TABLE message_statuses DROP CONSTRAINT IF EXISTS message_statuses_pkey;
        ALTER TABLE message_statuses
            ADD CONSTRAINT message_statuses_pkey PRIMARY KEY (wamid, status, participant);
    END IF;
END $$;

-- The latest status of each participant of a group message; like
-- message_latest_status, status_rank only grows. message_latest_status keeps
-- the statuses without a participant (1:1, and a group message's own).
CREATE TABLE IF NOT EXISTS message_participant_status (
    wamid          text NOT NULL,
    participant    text NOT NULL,
    group_id       text,
    -- The participant's contact record (contacts.contact_key).
    contact_key    text,
    status         text NOT NULL,
    status_rank    smallint NOT NULL,
    meta_timestamp timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (wamid, participant)
);

-- Group messages: the group the user wrote in (NULL for 1:1 chats).
ALTER TABLE messages ADD COLUMN IF NOT EXISTS group_id text;
CREATE INDEX IF NOT EXISTS messages_group_time ON messages (group_id, meta_timestamp)
    WHERE group_id IS NOT NULL;

-- Group webhook fields (group_lifecycle_update, group_participants_update,
-- group_settings_update, group_status_update, and group_* fields not known
-- yet), one row per item of value.groups[]. event_key is built from the
-- item's own ids: group:{group_id}:{type}:request:{request_id},
-- ...:join_request:{join_request_id}, ...:at:{unix time}[:{participants}],
-- else group:{sha256 of the content}.
CREATE TABLE IF NOT EXISTS group_events (
    event_key       text PRIMARY KEY,
    field           text NOT NULL,
    group_id        text,
    update_type     text,
    request_id      text,
    join_request_id text,
    account_id      text,
    phone_number_id text,
    meta_timestamp  timestamptz,
    raw             jsonb NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS group_events_group_time ON group_events (group_id, meta_timestamp);

-- Current membership as group_participants_update shows it: added
-- participants (invite link joins, approved join requests) are members,
-- removed ones (removed by the business, or left) are not. A row only moves
-- forward in Meta's time (ties by event key), whatever the arrival order.
CREATE TABLE IF NOT EXISTS group_members (
    group_id       text NOT NULL,
    -- The participant's contact record (contacts.contact_key).
    contact_key    text NOT NULL,
    is_member      boolean NOT NULL,
    wa_id          text,
    user_id        text,
    changed_at     timestamptz NOT NULL,
    -- The group_events row that set the current state.
    event_key      text NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, contact_key)
);

-- A group message's own state, derived from its participants' receipts:
-- "read by n of m". members counts the current members wa-ingest knows of
-- (NULL when it has seen no membership event for the group).
CREATE OR REPLACE VIEW group_message_receipts AS
SELECT p.wamid,
       p.group_id,
       count(*) AS participants,
       count(*) FILTER (WHERE p.status_rank BETWEEN 2 AND 4) AS delivered,
       count(*) FILTER (WHERE p.status_rank BETWEEN 3 AND 4) AS read,
       count(*) FILTER (WHERE p.status_rank = 4) AS played,
       count(*) FILTER (WHERE p.status_rank = 5) AS failed,
       (SELECT nullif(count(*) FILTER (WHERE m.is_member), 0)
          FROM group_members m WHERE m.group_id = p.group_id) AS members
FROM message_participant_status p
GROUP BY p.wamid, p.group_id;

-- One contact across identities. A record is found by wa_id or by user_id
-- (each unique), created at its first sighting, and links both ids once Meta
-- shows them together. contact_key is stable: the id it was first seen by.
-- When two records turn out to be one person, the one first seen survives
-- and the other keeps its key as a tombstone (merged_into, no ids).
ALTER TABLE contacts ADD COLUMN IF NOT EXISTS parent_user_id text;
ALTER TABLE contacts ADD COLUMN IF NOT EXISTS username text;
ALTER TABLE contacts ADD COLUMN IF NOT EXISTS merged_into text;

-- The 0001 schema keyed contacts by user_id, else wa_id, so one person may
-- have two rows: one by phone number, one by BSUID that also holds the
-- number. Fold them by the rule above before the ids become unique; a number
-- held by two different BSUIDs stays with the first seen (the BSUID is the
-- person).
DO $$
DECLARE
    pair record;
    loser contacts;
    survivor contacts;
BEGIN
    FOR pair IN
        SELECT r.contact_key AS loser_key, r.survivor_key
        FROM (SELECT contact_key,
                     first_value(contact_key) OVER (
                         PARTITION BY wa_id ORDER BY first_seen_at NULLS LAST, contact_key
                     ) AS survivor_key
              FROM contacts
              WHERE wa_id IS NOT NULL AND merged_into IS NULL) r
        WHERE r.contact_key <> r.survivor_key
        ORDER BY r.contact_key
    LOOP
        SELECT * INTO loser FROM contacts WHERE contact_key = pair.loser_key;
        SELECT * INTO survivor FROM contacts WHERE contact_key = pair.survivor_key;
        IF loser.user_id IS NOT NULL AND survivor.user_id IS NOT NULL
           AND loser.user_id <> survivor.user_id THEN
            UPDATE contacts SET wa_id = NULL, updated_at = now()
            WHERE contact_key = loser.contact_key;
        ELSE
            UPDATE contacts
            SET wa_id = NULL, user_id = NULL, parent_user_id = NULL,
                merged_into = survivor.contact_key, updated_at = now()
            WHERE contact_key = loser.contact_key;
            UPDATE contacts
            SET user_id = COALESCE(survivor.user_id, loser.user_id),
                parent_user_id = COALESCE(survivor.parent_user_id, loser.parent_user_id),
                profile_name = CASE
                    WHEN loser.last_seen_at > survivor.last_seen_at
                         OR survivor.profile_name IS NULL
                    THEN COALESCE(loser.profile_name, survivor.profile_name)
                    ELSE survivor.profile_name END,
                first_seen_at = LEAST(survivor.first_seen_at, loser.first_seen_at),
                last_seen_at = GREATEST(survivor.last_seen_at, loser.last_seen_at),
                updated_at = now()
            WHERE contact_key = survivor.contact_key;
        END IF;
    END LOOP;
END $$;

CREATE UNIQUE INDEX IF NOT EXISTS contacts_wa_id_key ON contacts (wa_id);
CREATE UNIQUE INDEX IF NOT EXISTS contacts_user_id_key ON contacts (user_id);

COMMENT ON COLUMN outbox.contact_key IS
    'The ordering key: group:{group_id} for group messages, receipts and group events; '
    'else the contact record''s contact_key; '''' when the item names no one.';
COMMENT ON COLUMN outbox.wamid IS
    'The wamid; for group events (no wamid) the event id, as a tie-breaker.';
