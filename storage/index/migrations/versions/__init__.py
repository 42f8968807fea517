"""The revisions, oldest first (``NNNN_<what>.py``)."""
