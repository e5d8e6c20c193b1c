-- Gallery state and per-event outcomes (consumer offsets belong to the runtime).

CREATE TABLE IF NOT EXISTS products (
    sku              text PRIMARY KEY CHECK (length(sku) BETWEEN 1 AND 64),
    product_version  bigint      NOT NULL,          -- highest applied ProductChanged version (-1: none)
    gallery_version  bigint      NOT NULL,          -- highest applied MediaGalleryChanged version, raised by a delete
    deleted          boolean     NOT NULL DEFAULT false,
    name             text,
    enabled          boolean     NOT NULL DEFAULT true,
    row_version      bigint      NOT NULL DEFAULT 1, -- +1 on every write: proves no-ops wrote nothing
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS gallery_images (
    sku              text        NOT NULL REFERENCES products (sku) ON DELETE CASCADE,
    file_path        text        NOT NULL CHECK (length(file_path) BETWEEN 2 AND 255),
    etag             text        NOT NULL,
    size_bytes       bigint      NOT NULL,
    content_type     text,
    label            varchar(255),
    position         integer,
    disabled         boolean     NOT NULL DEFAULT false,
    roles            text[]      NOT NULL DEFAULT '{}',
    content_version  integer     NOT NULL DEFAULT 1, -- +1 on every new ETag, for cache purges
    row_version      bigint      NOT NULL DEFAULT 1,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sku, file_path)
);

-- One row per event that changed state or was dead-lettered (no-ops cost no
-- per-event write; they are counted in request_outcomes).
CREATE TABLE IF NOT EXISTS event_outcomes (
    event_id      uuid        PRIMARY KEY,
    sku           text,
    request_id    text,
    outcome       text        NOT NULL,   -- written | partial | dead_lettered
    reason        text,
    fingerprint   text,
    topic         text        NOT NULL,
    partition     integer     NOT NULL,
    "offset"      bigint      NOT NULL,
    applications  integer     NOT NULL DEFAULT 1, -- >1 only when a partial event was replayed
    recorded_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS event_outcomes_request_id ON event_outcomes (request_id) WHERE request_id IS NOT NULL;

-- "What happened to my request": counts per request_id and outcome, every outcome.
CREATE TABLE IF NOT EXISTS request_outcomes (
    request_id  text        NOT NULL,
    outcome     text        NOT NULL,
    events      bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, outcome)
);
