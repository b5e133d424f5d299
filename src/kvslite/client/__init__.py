"""kvslite's client libraries: the producer (PutMedia uploads) and the image
fetcher (GetImages to files). They talk to a server over HTTP and import no server code."""
