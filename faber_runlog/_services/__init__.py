"""Services on runs: lifecycle, resume, archive, verify, reports, frames and views, the store, the gateway."""
