"""Dashboard views (to be built)."""
