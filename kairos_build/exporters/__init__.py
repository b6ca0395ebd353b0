"""Exporters: one module per artifact format, registered as kairos_build.exporters plugins."""
