-- Retention deletes the oldest replay records first, in small batches (streamer.ops.retention).
CREATE INDEX IF NOT EXISTS dead_letter_replays_replayed_at ON dead_letter_replays (replayed_at);
