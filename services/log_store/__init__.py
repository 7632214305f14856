"""The log_store service: owns inference log segments (Parquet in object storage, index in PostgreSQL)."""
