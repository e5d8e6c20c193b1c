-- Galleries by object: an object changed in the bucket names its file path, and the SKUs
-- whose galleries use it are found through this index, not a scan.
CREATE INDEX IF NOT EXISTS gallery_images_file_path ON gallery_images (file_path);
