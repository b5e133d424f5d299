"""Domain rules: streams, fragments, time-to-fragment lookup, retention."""
