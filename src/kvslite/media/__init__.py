"""Media handling: Matroska (EBML) reading/writing and synthetic test video."""
