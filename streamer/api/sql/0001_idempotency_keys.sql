-- Intake requests sent with an Idempotency-Key: the first answer, replayed to a retry with
-- the same key and body (nothing published again); another body under the same key is
-- refused. Keyed per token (a hash prefix, never the token) and route. `created_at` is
-- when the key was first used: what a retention prunes by.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    principal     text        NOT NULL,
    route         text        NOT NULL,
    key           text        NOT NULL,
    fingerprint   bytea       NOT NULL,             -- SHA-256 of the request (body and query)
    state         text        NOT NULL,             -- taking (in progress) | done
    status_code   integer,
    answer        jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, route, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys (created_at);
