"""Storage: keys and bytes on fsspec (local, memory, S3), capabilities, exclusive create, retries."""
