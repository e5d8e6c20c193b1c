-- Retention (streamer.ops.retention) deletes the oldest bookkeeping rows first, in small
-- batches: by these indexes, a batch reads only the rows it deletes.
CREATE INDEX IF NOT EXISTS event_outcomes_recorded_at ON event_outcomes (recorded_at);
CREATE INDEX IF NOT EXISTS request_outcomes_updated_at ON request_outcomes (updated_at);
