"""Durable broker state in SQLite: subscriber positions, deliveries, errors, DLQ, event index."""
