"""Per-model scheduling: a dynamic batching queue feeding one worker per model instance."""
