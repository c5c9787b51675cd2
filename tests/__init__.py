"""aivc tests (a regular package, so `tests.conftest` never resolves to a wheel that ships its own `tests`)."""
