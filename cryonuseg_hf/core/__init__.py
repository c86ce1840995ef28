"""Constants and types every layer shares: the fold protocol, paths, tile geometry, machine."""
