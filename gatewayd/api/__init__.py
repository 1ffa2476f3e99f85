"""The local REST API."""
