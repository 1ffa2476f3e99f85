"""Durable state: SQLite files owned by one worker thread each."""
