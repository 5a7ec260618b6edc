"""rackscale: an NVLink rack as one schedulable unit for LLM inference on Kubernetes."""

__version__ = "0.1.0"
