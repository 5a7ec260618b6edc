"""The pure planner: what each deployment needs this pass, and the statuses to report.

Replica states and actions (`lifecycle`), the whole step for a deployment and what the operator
remembers of it between passes (`step`), and the statuses (`status`). No I/O: the controller's
executor applies what the planner returns.
"""
