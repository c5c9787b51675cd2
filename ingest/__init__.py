"""aivc.ingest."""
