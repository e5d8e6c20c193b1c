"""The event contract every job shares: Avro schemas, the codec, event models and topics."""
