-- Delivered deliveries are deleted after WA_DELIVER_RETENTION (with their
-- attempts, by the foreign key's cascade); this finds them.
CREATE INDEX IF NOT EXISTS deliveries_delivered
    ON deliveries (delivered_at) WHERE state = 'delivered';
