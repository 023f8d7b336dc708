"""Broker and topic administration (no stream processing here)."""
