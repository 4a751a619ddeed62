"""Metrics: accuracy (top-1; mAP for detection), latency distribution, memory."""
