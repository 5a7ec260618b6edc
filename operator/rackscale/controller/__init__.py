"""The operator: kopf handlers, the in-memory cluster view, and reconciling against the API."""
