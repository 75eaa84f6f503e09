-- HTTP delivery of downstream events (`wa-ingest deliver`).
--
-- An event is fanned out to the matching endpoints when the relay releases
-- it (a trigger on the outbox, in the relay's own transaction), so every
-- endpoint sees the same per-conversation sequence as the AMQP consumers,
-- and nothing released can be missed. A delivery keeps its own copy of the
-- event: the outbox is pruned after a day, deliveries may wait for days.

CREATE TABLE IF NOT EXISTS delivery_endpoints (
    id               bigserial PRIMARY KEY,
    url              text NOT NULL,
    description      text NOT NULL DEFAULT '',
    -- whsec_<base64>, newest first. Every one signs while a rotation lasts.
    secrets          text[] NOT NULL CHECK (cardinality(secrets) >= 1),
    -- Event types ('message.created', 'group.*'); empty means all.
    event_types      text[] NOT NULL DEFAULT '{}',
    -- The phone_number_ids whose events it gets; empty means all.
    phone_number_ids text[] NOT NULL DEFAULT '{}',
    -- Requests per second, per deliverer process; NULL is no limit.
    rate_limit       integer CHECK (rate_limit IS NULL OR rate_limit > 0),
    -- Conversations sent to at once, per deliverer process.
    max_in_flight    integer NOT NULL DEFAULT 8 CHECK (max_in_flight BETWEEN 1 AND 1000),
    enabled          boolean NOT NULL DEFAULT true,
    disabled_reason  text,
    disabled_at      timestamptz,
    -- Since the first failure after the last success.
    failing_since    timestamptz,
    -- Retry-After of a 429 or 503: the whole endpoint waits.
    paused_until     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- One event for one endpoint. Sent in sequence order per (endpoint,
-- conversation); kept, delivered or not, until the endpoint is removed.
CREATE TABLE IF NOT EXISTS deliveries (
    id              bigserial PRIMARY KEY,
    endpoint_id     bigint NOT NULL REFERENCES delivery_endpoints (id) ON DELETE CASCADE,
    event_id        text NOT NULL,
    event_type      text NOT NULL,
    -- The outbox ordering key: a contact, group:{id}, or '' (account events).
    conversation    text NOT NULL,
    sequence        bigint NOT NULL,
    payload         jsonb NOT NULL,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered')),
    attempts        integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    delivered_at    timestamptz,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX IF NOT EXISTS deliveries_lane_head
    ON deliveries (endpoint_id, conversation, sequence) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_endpoint_time ON deliveries (endpoint_id, created_at);

-- Per (endpoint, conversation): how many deliveries wait, when the head may
-- be tried again, and which deliverer holds it (a lease, so that replicas
-- share the work and never send one conversation in parallel).
CREATE TABLE IF NOT EXISTS delivery_lanes (
    endpoint_id     bigint NOT NULL REFERENCES delivery_endpoints (id) ON DELETE CASCADE,
    conversation    text NOT NULL,
    pending         integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    leased_until    timestamptz,
    lease_owner     text,
    PRIMARY KEY (endpoint_id, conversation)
);
CREATE INDEX IF NOT EXISTS delivery_lanes_due
    ON delivery_lanes (endpoint_id, next_attempt_at) WHERE pending > 0;

-- Every HTTP attempt, for `wa-ingest endpoints attempts` and the console.
CREATE TABLE IF NOT EXISTS delivery_attempts (
    id              bigserial PRIMARY KEY,
    delivery_id     bigint NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    endpoint_id     bigint NOT NULL,
    event_id        text NOT NULL,
    attempted_at    timestamptz NOT NULL DEFAULT now(),
    status_code     integer,
    latency_ms      double precision NOT NULL,
    error           text,
    -- NULL when delivered (or the endpoint was disabled).
    next_attempt_at timestamptz
);
CREATE INDEX IF NOT EXISTS delivery_attempts_endpoint ON delivery_attempts (endpoint_id, id DESC);
CREATE INDEX IF NOT EXISTS delivery_attempts_delivery ON delivery_attempts (delivery_id);

-- Fan-out at release: the outbox rows whose published_at this statement set.
CREATE OR REPLACE FUNCTION delivery_fan_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM delivery_endpoints) THEN
        RETURN NULL;
    END IF;
    WITH released AS (
        SELECT n.* FROM released_new n JOIN released_old o ON o.id = n.id
        WHERE o.published_at IS NULL AND n.published_at IS NOT NULL
    ), queued AS (
        INSERT INTO deliveries (endpoint_id, event_id, event_type, conversation, sequence, payload)
        SELECT e.id, r.event_id, r.event_type, r.contact_key, COALESCE(r.sequence, 0),
               r.payload || jsonb_build_object('sequence', r.sequence, 'late', COALESCE(r.late, false))
        FROM released r
        JOIN delivery_endpoints e
          ON (cardinality(e.event_types) = 0
              OR EXISTS (SELECT 1 FROM unnest(e.event_types) t
                         WHERE t = r.event_type
                            OR (right(t, 2) = '.*' AND starts_with(r.event_type, left(t, -1)))))
         AND (cardinality(e.phone_number_ids) = 0
              OR r.payload ->> 'phone_number_id' = ANY (e.phone_number_ids))
        ORDER BY e.id, r.contact_key, r.sequence
        ON CONFLICT (endpoint_id, event_id) DO NOTHING
        RETURNING endpoint_id, conversation
    )
    INSERT INTO delivery_lanes AS l (endpoint_id, conversation, pending)
    SELECT endpoint_id, conversation, count(*) FROM queued
    GROUP BY endpoint_id, conversation
    ORDER BY endpoint_id, conversation
    ON CONFLICT (endpoint_id, conversation) DO UPDATE SET pending = l.pending + EXCLUDED.pending;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS outbox_delivery_fan_out ON outbox;
CREATE TRIGGER outbox_delivery_fan_out
    AFTER UPDATE ON outbox
    REFERENCING OLD TABLE AS released_old NEW TABLE AS released_new
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_fan_out();
