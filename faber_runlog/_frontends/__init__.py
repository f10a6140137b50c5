"""Frontends: the CLI, the MCP servers, the async API, the viewer, the demo."""
