-- An endpoint's rate_limit and max_in_flight hold across all deliverers
-- together (0004's comments say per deliverer process: that was so until
-- this migration).

-- When the endpoint's next request may go. Each request takes this slot
-- and moves it on by 1 / rate_limit seconds, so every deliverer draws from
-- the same budget.
ALTER TABLE delivery_endpoints ADD COLUMN IF NOT EXISTS rate_slot_at timestamptz;

-- The conversations some deliverer holds (a lease is cleared when the
-- conversation is let go), counted at every claim.
CREATE INDEX IF NOT EXISTS delivery_lanes_leased
    ON delivery_lanes (endpoint_id) WHERE leased_until IS NOT NULL;
