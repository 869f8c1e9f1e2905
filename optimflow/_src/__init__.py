"""Private helpers shared by the library (one copy each)."""
