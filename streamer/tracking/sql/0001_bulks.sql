-- Bulk requests taken in over HTTP (`streamer serve`), what became of each item, and the
-- ImportCompleted events to publish (an outbox: written in the transaction that finds a
-- bulk complete, published by the relay, marked published once the broker acknowledged).

CREATE TABLE IF NOT EXISTS bulks (
    bulk_uuid      uuid        PRIMARY KEY,
    request_id     text        NOT NULL,
    kind           text        NOT NULL,            -- galleries (bulk payload) | events (JSON lines)
    state          text        NOT NULL,            -- publishing | accepted | partial | failed
    items_total    integer     NOT NULL,
    accepted       integer     NOT NULL DEFAULT 0,  -- acknowledged by the broker: tracked to the end
    rejected       integer     NOT NULL DEFAULT 0,
    superseded     integer     NOT NULL DEFAULT 0,
    undeliverable  integer     NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    accepted_at    timestamptz,
    completed_at   timestamptz
);
CREATE INDEX IF NOT EXISTS bulks_request_id ON bulks (request_id, created_at DESC);
CREATE INDEX IF NOT EXISTS bulks_open ON bulks (created_at) WHERE completed_at IS NULL;
CREATE INDEX IF NOT EXISTS bulks_created ON bulks (created_at DESC);

-- One row per submitted item. `status` is the intake's word (publishing, accepted, rejected,
-- superseded, undeliverable); `outcome` the consumer's (NULL while pending).
CREATE TABLE IF NOT EXISTS bulk_items (
    bulk_uuid      uuid        NOT NULL REFERENCES bulks (bulk_uuid) ON DELETE CASCADE,
    item_id        integer     NOT NULL,
    sku            text,
    status         text        NOT NULL,
    reason         text,
    error_message  text,
    event_id       uuid,
    outcome        text,
    outcome_reason text,
    processed_at   timestamptz,
    PRIMARY KEY (bulk_uuid, item_id)
);
CREATE INDEX IF NOT EXISTS bulk_items_pending ON bulk_items (bulk_uuid)
    WHERE outcome IS NULL AND event_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS import_completions (
    bulk_uuid     uuid        PRIMARY KEY REFERENCES bulks (bulk_uuid) ON DELETE CASCADE,
    record        jsonb       NOT NULL,   -- the ImportCompleted record, timestamps as epoch ms
    last_processed_at timestamptz,        -- the bulk's last item processed (for the latency metric)
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    topic         text
);
CREATE INDEX IF NOT EXISTS import_completions_unpublished ON import_completions (created_at)
    WHERE published_at IS NULL;

-- How far the relay has read its own topic back: a new leader reads on from here.
CREATE TABLE IF NOT EXISTS relay_positions (
    topic        text    NOT NULL,
    partition    integer NOT NULL,
    next_offset  bigint  NOT NULL,
    PRIMARY KEY (topic, partition)
);
