-- What the replicator put at each destination, so that it never needs to scan a bucket.
-- replica_skus: the newest GalleryUpdated version applied per SKU (older ones are stale).
-- replica_refs: which SKU's gallery uses which file path at the destination (reference counts).
-- replica_objects: what the destination holds per path: its state, the source ETag copied,
--   and a generation bumped on every change, which writers compare under an advisory lock.
CREATE TABLE IF NOT EXISTS replica_skus (
    destination text NOT NULL,
    sku text NOT NULL,
    version bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (destination, sku)
);

CREATE TABLE IF NOT EXISTS replica_refs (
    destination text NOT NULL,
    sku text NOT NULL,
    file_path text NOT NULL,
    PRIMARY KEY (destination, sku, file_path)
);

CREATE INDEX IF NOT EXISTS replica_refs_by_path ON replica_refs (destination, file_path);

CREATE TABLE IF NOT EXISTS replica_objects (
    destination text NOT NULL,
    file_path text NOT NULL,
    state text NOT NULL CHECK (state IN ('present', 'deleting', 'absent')),
    etag text,
    size_bytes bigint,
    gen bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (destination, file_path)
);

CREATE INDEX IF NOT EXISTS replica_objects_deleting
    ON replica_objects (destination) WHERE state = 'deleting';
