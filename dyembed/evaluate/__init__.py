"""Offline evaluation: protocols, rank-based metrics, baselines."""
