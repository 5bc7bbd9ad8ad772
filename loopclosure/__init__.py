"""Loop closure: keyframes, loop detection and verification, the pose graph, and correcting the map by
rebuilding it at the optimised poses, all on a background worker (no Qt, no nets)."""
