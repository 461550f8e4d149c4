"""Placeholder while the method is written; it registers nothing yet."""
