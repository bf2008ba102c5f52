"""Idempotent data stages: download sources, tokenize them into shards, write manifests."""
