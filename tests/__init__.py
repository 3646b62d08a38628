"""Test suite: offline unit tests with scripted fake models, and a marked tier on the embedded model."""
