"""Test helpers shared by unit and integration tests: a real OTLP receiver, file sink readers."""
