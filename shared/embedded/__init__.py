"""The embedded stack: NATS, PostgreSQL and S3 from wheels, and the supervisor of every service."""
