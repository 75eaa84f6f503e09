-- Every inbound message and business echo, once per wamid.
CREATE TABLE messages (
    wamid                text PRIMARY KEY,
    direction            text NOT NULL CHECK (direction IN ('inbound', 'echo')),
    -- user_id (business-scoped) when present, else wa_id; NULL when neither
    -- was sent (some system messages).
    contact_key          text,
    wa_id                text,
    user_id              text,
    phone_number_id      text,
    display_phone_number text,
    message_type         text NOT NULL,
    -- Meta's timestamp; NULL when it could not be read (raw keeps the original).
    meta_timestamp       timestamptz,
    raw                  jsonb NOT NULL,
    stored_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_contact_time ON messages (contact_key, meta_timestamp);

-- Every status update, once per (wamid, status): a status shares its
-- message's wamid, so the wamid alone would throw away delivered and read.
CREATE TABLE message_statuses (
    wamid             text NOT NULL,
    status            text NOT NULL,
    meta_timestamp    timestamptz,
    recipient_id      text,
    recipient_user_id text,
    contact_key       text,
    phone_number_id   text,
    errors            jsonb,
    conversation      jsonb,
    pricing           jsonb,
    raw               jsonb NOT NULL,
    stored_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (wamid, status)
);

-- The latest status of each wamid. status_rank only grows:
-- sent 1 < delivered 2 < read 3 < played 4, failed 5 is terminal; statuses
-- wa-ingest does not know rank 0 and never replace a known one.
CREATE TABLE message_latest_status (
    wamid          text PRIMARY KEY,
    status         text NOT NULL,
    status_rank    smallint NOT NULL,
    meta_timestamp timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- WhatsApp users as the business sees them. last_seen_at only moves forward
-- by Meta's timestamp; the profile name is the one of the latest message.
CREATE TABLE contacts (
    contact_key   text PRIMARY KEY,
    wa_id         text,
    user_id       text,
    profile_name  text,
    first_seen_at timestamptz,
    last_seen_at  timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Everything else: template and account updates, value-level errors, fields
-- wa-ingest does not know yet. event_key is event:{sha256 of field and the
-- canonical value with entry.id and entry.time}.
CREATE TABLE webhook_events (
    event_key      text PRIMARY KEY,
    field          text NOT NULL,
    account_id     text,
    -- entry.time: Meta gives these notifications no time of their own.
    meta_timestamp timestamptz,
    raw            jsonb NOT NULL,
    stored_at  timestamptz NOT NULL DEFAULT now()
);
