"""kvslite: a self-hosted server that speaks the Amazon Kinesis Video Streams protocol."""

__version__ = "0.1.0"
