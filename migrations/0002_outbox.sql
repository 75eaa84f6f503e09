-- Downstream events, written in the transaction that stores what they
-- announce (the transactional outbox): one message.created per new message
-- or echo, one message.status per advance of a wamid's latest status.
-- A duplicate delivery inserts no row and therefore no event.
CREATE TABLE outbox (
    id             bigserial PRIMARY KEY,
    -- Stable id, also the AMQP message id: msg:{wamid}, echo:{wamid},
    -- status:{wamid}:{status}. Consumers deduplicate on it.
    event_id       text NOT NULL UNIQUE,
    event_type     text NOT NULL,
    -- '' when the item named no user.
    contact_key    text NOT NULL,
    wamid          text NOT NULL,
    meta_timestamp timestamptz,
    payload        jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- Set by the relay on release.
    published_at   timestamptz,
    sequence       bigint,
    late           boolean
);
CREATE INDEX outbox_due ON outbox (created_at) WHERE published_at IS NULL;
CREATE INDEX outbox_contact_pending ON outbox (contact_key) WHERE published_at IS NULL;
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Per-contact release state. A relay locks a contact's row while it
-- releases that contact's events, so several relays never interleave one
-- contact; the sequence and the last released position only move forward.
CREATE TABLE outbox_contacts (
    contact_key    text PRIMARY KEY,
    last_sequence  bigint NOT NULL DEFAULT 0,
    last_timestamp timestamptz,
    last_wamid     text
);
