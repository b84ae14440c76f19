"""Data in motion: contracts, Kafka sources/sinks, stream and batch jobs, validation, the store."""
