"""The gallery sync job: product and media events in, ETag-checked gallery state out."""
