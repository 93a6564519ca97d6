"""The end-to-end demo and its synthetic tenant data."""
