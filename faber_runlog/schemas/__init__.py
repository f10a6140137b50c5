"""The shipped JSON Schemas (events, event types, reports, gateway.json); read by ``faber_runlog._format.schemas``."""
