"""aivc.store."""
