-- The W3C traceparent of the request that took the bulk in (NULL while tracing is off): the
-- bulk's ImportCompleted is sent on in that trace, by whichever `streamer serve` relays it.
ALTER TABLE bulks ADD COLUMN IF NOT EXISTS traceparent text;
