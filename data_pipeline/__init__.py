"""Apache Beam preprocessing: raw image-text data -> ArrayRecord shards."""
