"""Operations: what operators run beside the jobs (topics, schema, status)."""
