"""frames stage."""
