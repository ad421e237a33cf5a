"""Maze grids, apart from the environment that plays them (``maze_env.py``).

Modules: ``grid`` (the maze data, generation from a seed, geometry and distances), ``render`` (pictures).
"""
