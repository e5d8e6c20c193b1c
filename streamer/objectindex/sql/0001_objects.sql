-- The object index: one row per object key of a bucket, kept current from bucket notifications.
-- A row changes only for a newer record of its key: by sequencer when both sides have one
-- (hex, compared left-padded with zeros), otherwise by event time.

CREATE TABLE IF NOT EXISTS objects (
    bucket        text        NOT NULL,
    key           text        NOT NULL,
    etag          text,                             -- null when deleted
    size_bytes    bigint,
    content_type  text,
    deleted       boolean     NOT NULL DEFAULT false,
    sequencer     text,                             -- S3's per-key order, upper-case hex; null when the source has none
    event_time    timestamptz NOT NULL,             -- when the change happened (notification, LastModified or observation)
    source        text        NOT NULL,             -- notification | lookup | reconcile
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bucket, key)
);
