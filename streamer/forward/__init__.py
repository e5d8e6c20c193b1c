"""The webhook forwarder: gallery changes delivered to external HTTP APIs, signed, idempotent."""
