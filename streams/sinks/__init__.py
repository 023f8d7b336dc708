"""Sinks: where a batch's outputs become durable (Feast online + offline, interaction logs)."""
