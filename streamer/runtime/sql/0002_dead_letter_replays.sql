-- Which dead letters were replayed, so a second `streamer dlq replay` does not send them again.
CREATE TABLE IF NOT EXISTS dead_letter_replays (
    dlq_topic      text        NOT NULL,
    dlq_partition  integer     NOT NULL,
    dlq_offset     bigint      NOT NULL,
    target_topic   text        NOT NULL,
    replayed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
);
