"""The health service."""
