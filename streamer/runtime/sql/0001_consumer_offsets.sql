-- The source of truth for consumed positions. `epoch` fences a worker that lost
-- a partition: the new owner bumps it on assignment, and the old owner's
-- offset update (WHERE epoch = its epoch) then matches no row.
CREATE TABLE IF NOT EXISTS consumer_offsets (
    group_id     text        NOT NULL,
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    next_offset  bigint      NOT NULL DEFAULT -1,   -- -1: nothing committed yet
    epoch        bigint      NOT NULL DEFAULT 0,
    owner        text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
