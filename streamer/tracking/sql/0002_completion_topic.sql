-- A bulk's ImportCompleted goes to the completion topic of the deployment that took it in,
-- whichever `streamer serve` leads the relay (several deployments may share a database).
-- NULL for bulks taken in before this column: the leader's own topic.
ALTER TABLE bulks ADD COLUMN IF NOT EXISTS completion_topic text;
