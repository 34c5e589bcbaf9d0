"""Builders that derive new preference-pair columns (e.g. per-image captions) from existing tables."""
