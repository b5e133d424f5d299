"""WebRTC ingestion: the storage session (JoinStorageSession) and its WebRTC peer, which
record a master's live media into the channel's stream through the archive's ingest path.

Between the operations and the archive and signaling layers: it uses both, and neither
knows of it (the hub reaches it through its `storage_peer` seam).
"""
