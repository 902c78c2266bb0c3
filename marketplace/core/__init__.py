"""Shared pieces of the marketplace: errors, fields, queues, the embedded Redis and the process supervisor."""
