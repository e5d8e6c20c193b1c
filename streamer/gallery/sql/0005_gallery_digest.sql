-- The digest of the media payload that made a gallery's images as they are (NULL: none
-- known): a re-sync of the same payload is recognised before its images are decoded. Stored
-- followed by the gallery_event_id it holds with: a writer unaware of this column moves the
-- event id, and the digest left behind no longer holds.
ALTER TABLE products ADD COLUMN IF NOT EXISTS gallery_digest bytea;
