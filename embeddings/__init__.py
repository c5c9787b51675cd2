"""aivc.embeddings."""
