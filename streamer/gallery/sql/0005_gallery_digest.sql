-- The digest of the media payload that made a gallery's images as they are (NULL: none
-- known): a re-sync of the same payload is recognised before its images are decoded.
ALTER TABLE products ADD COLUMN IF NOT EXISTS gallery_digest bytea;
