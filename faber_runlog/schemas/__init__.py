"""The shipped JSON Schemas (events, event types, reports, gateway.json); read through ``faber_runlog._schemas``."""
