"""imcf."""
