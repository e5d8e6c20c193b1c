"""The replicator job: images of changed galleries copied to a destination store (``streamer replicate``)."""
