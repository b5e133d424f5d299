"""Prometheus metrics, served at `GET /metrics` in the text exposition format.

Labels stay bounded: error codes and connection kinds, never stream names (a fleet may
have thousands of streams).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

FRAGMENTS = Counter("kvslite_fragments_ingested", "Fragments persisted by PutMedia")
FRAGMENT_COMMITS = Counter(
    "kvslite_fragment_commits",
    "Metadata transactions that committed fragments: fragments completing together share one")
INGESTED_BYTES = Counter("kvslite_ingested_bytes", "Bytes of fragments persisted by PutMedia")
PERSIST_SECONDS = Histogram(
    "kvslite_persisted_ack_seconds",
    "From a fragment's first byte arriving to its PERSISTED ack (blob written, row committed)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
PUT_MEDIA_HANDOFFS = Counter("kvslite_putmedia_handoffs", "PutMedia body reads that went on "
                             "to a worker thread (to archive a fragment, or to parse a long run "
                             "of small elements)")
IMAGE_REQUESTS = Counter("kvslite_getimages_requests", "GetImages pages served")
IMAGES = Counter("kvslite_getimages_images", "Images returned by GetImages")
IMAGE_SECONDS = Histogram("kvslite_getimages_seconds", "Time to serve one GetImages page")
DECODE_SECONDS = Histogram("kvslite_decode_seconds",
                           "Time to decode and encode the images of one fragment")
CONNECTIONS = Gauge("kvslite_open_connections", "Open long-lived media connections",
                    ["kind"])
LEASE_RENEWALS = Counter("kvslite_lease_renewals", "Lease renewals written on their own (an "
                         "upload's lease is also renewed by each fragment it commits)")
LEASES_LOST = Counter("kvslite_leases_lost",
                      "Uploads or reads whose per-stream slot expired and was taken over")
SWEEPER_LAG = Gauge("kvslite_sweeper_lag_seconds",
                    "Age past retention of the oldest fragment the last sweep found expired")
IMAGE_CACHE = Counter("kvslite_image_cache", "Rendered-image cache lookups, by result",
                      ["result"])
IMAGE_CACHE_BYTES = Gauge("kvslite_image_cache_bytes", "Bytes of images in the cache")
DELIVERIES = Counter("kvslite_deliveries",
                     "Image-generation and notification deliveries, by kind and result "
                     "(delivered, retried, dropped: outbox full or nothing left to do, "
                     "failed: given up after its attempts or a permanent error)",
                     ["kind", "result"])
ERRORS = Counter("kvslite_errors", "AWS-style errors answered, by code", ["code"])
SIGNALING_CONNECTIONS = Gauge("kvslite_signaling_connections",
                              "Open signaling WebSockets, by role (master, viewer)", ["role"])
SIGNALING_MESSAGES = Counter("kvslite_signaling_messages",
                             "Signaling messages by result (relayed, held for an absent "
                             "master, expired unheld, rate_limited, refused, invalid)",
                             ["result"])
SIGNALING_REFUSALS = Counter("kvslite_signaling_refusals",
                             "Signaling WebSocket upgrades refused, by error code", ["code"])
STORAGE_SESSIONS = Gauge("kvslite_storage_sessions",
                         "WebRTC storage sessions open on this node (JoinStorageSession)")
STORAGE_FRAGMENTS = Counter("kvslite_storage_fragments",
                            "Fragments archived from WebRTC storage sessions")
STORAGE_KEYFRAME_REQUESTS = Counter("kvslite_storage_keyframe_requests",
                                    "Keyframes (RTCP PLI) the storage peer asked masters for")
ACCESS_DENIED = Counter("kvslite_access_denied",
                        "Requests refused because no policy of the caller allowed them, or one "
                        "denied them, by IAM action", ["action"])
