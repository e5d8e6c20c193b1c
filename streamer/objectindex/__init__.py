"""The object index: what the bucket holds (ETag, size, deleted), kept current from its
notifications, shared by the ``objects`` job (the writer) and the gallery (a reader)."""
