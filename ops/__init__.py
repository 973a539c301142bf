"""The operator CLI (`switchboard ...`, see `ops.cli`), its admin API client, and deployment
files (`ops/deploy/`)."""
