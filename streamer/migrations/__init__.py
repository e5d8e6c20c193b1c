"""Versioned SQL migrations, applied in file-name order by ``streamer.db.migrate``."""
