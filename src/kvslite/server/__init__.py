"""The kvslite server. `app` wires the layers, which data crosses one way: edge (HTTP,
SigV4, AWS errors) -> ops (the APIs) -> delivery (images to S3, webhooks) -> archive
(streams, fragments, sampling, retention) -> store (metadata and media)."""
