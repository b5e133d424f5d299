"""The archive: the KVS rules for streams and fragments, above the stores.

The records the operations layer works with are re-exported here, so nothing above
the archive needs to import a store.
"""

from kvslite.server.store.metadata import Clock, Fragment, Lease, Stream, seq_of

__all__ = ["Clock", "Fragment", "Lease", "Stream", "seq_of"]
