"""aivc.schemas."""
