-- Which event set each version: the first event to reach a version keeps it, and another
-- event with the same version is stale (NULL: written before this migration; the next event
-- with the stored version then takes it over, as equal versions were applied before).
ALTER TABLE products ADD COLUMN IF NOT EXISTS product_event_id uuid;
ALTER TABLE products ADD COLUMN IF NOT EXISTS gallery_event_id uuid;
