"""Tools beside training that reuse its parts: the lr range test."""
