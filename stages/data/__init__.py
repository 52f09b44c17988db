"""Data: text sources, token shards, chat rendering and the built-in task generators."""
