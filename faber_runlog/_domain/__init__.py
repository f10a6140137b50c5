"""The domain: event types and transitions, events, the folded state, registries, metadata, plans, queries."""
