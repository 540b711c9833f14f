"""hetero-sched: heterogeneous (TP, CP) group planning for long-context LLM training steps."""
from .latency import AnalyticLatency, LatencyModel, TableLatency, latency_model
from .milp.backends import BACKENDS
from .milp.solve import solve
from .plan import Group, Plan, SolveResult
from .specs import Cluster, GpuSpec, ModelSpec

__version__ = "0.1.0"
__all__ = [
           "BACKENDS",
           "AnalyticLatency",
           "Cluster",
           "GpuSpec",
           "Group",
           "LatencyModel",
           "ModelSpec",
           "Plan",
           "SolveResult",
           "TableLatency",
           "latency_model",
           "solve",
]
