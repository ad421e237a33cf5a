"""Maze grids apart from the environment that plays them: ``grid`` (generation, geometry, distances),
``render`` (pictures)."""
