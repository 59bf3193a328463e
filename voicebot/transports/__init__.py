"""Transports: wire formats <-> Session. Translation only, no decisions."""
