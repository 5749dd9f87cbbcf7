"""descriptions stage."""
