"""aivc.training."""
