"""One provider per AWS service; one method per operation."""
