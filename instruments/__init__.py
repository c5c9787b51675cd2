"""aivc.instruments."""
