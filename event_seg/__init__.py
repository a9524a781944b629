"""event_seg."""
