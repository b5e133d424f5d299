"""Persistence: stream metadata (SQLite by default) and media blobs (files by default)."""
