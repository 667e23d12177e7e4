"""Small helpers shared by several concerns (templates, atomic files, JSON lines)."""
