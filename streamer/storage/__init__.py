"""S3-compatible object storage, shared by the jobs: settings, clients and the key scheme."""
