"""Reproducible benchmarks of filmless, side by side with peers (DCMTK, Orthanc). Not tests."""
