"""The KVS operations, one method each, on providers grouped by feature.

A provider's `operations()` maps operation names to its methods, and one AWS service may
span several providers: `kinesisvideo` is KinesisVideo (streams) and EventConfigurations;
`kinesis-video-archived-media` is ArchivedMedia, Clips and StreamingSessions;
`kinesis-video-media` is GetMedia and PutMedia. server/main.py merges the tables into one,
refusing an operation handled twice; PutMedia, a full-duplex upload, is handed to the edge
on its own. Health and the streaming-session pages are plain routes. `requests` (the typed
request shapes), `fragment_media` and `manifests` are helpers, not providers.
"""
