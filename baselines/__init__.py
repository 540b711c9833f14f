"""Homogeneous baselines: WLB-LLM packing and Megatron-LM packing over every (TP, CP)."""
