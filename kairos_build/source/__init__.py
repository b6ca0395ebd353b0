"""Resolve a base reference into a root directory."""
