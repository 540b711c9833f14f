"""The planner: instance, bounds, heuristic, MIP formulation, backends, solve."""
