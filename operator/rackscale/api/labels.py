"""Every label, annotation and taint key rackscale writes or reads: the one place they are spelt.

Keys under `rackscale.dev/` are rackscale's own (on the pods, Services, ComputeDomains and
InferencePools it creates, and the taint that keeps other work off a pool's nodes); the
`nvidia.com/` labels are those NVIDIA's GPU Feature Discovery sets on nodes, which a RackPool
reads. Render, topology, planner, controller and the CLI import them from here.
"""

from __future__ import annotations

# Node labels set by NVIDIA's GPU Feature Discovery.
DEFAULT_RACK_LABEL = "nvidia.com/gpu.clique"  # a RackPool's rackLabel unless it names another
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB per GPU

# The taint a pool's nodes may carry; rack-mode pods tolerate it for their own pool.
POOL_TAINT_KEY = "rackscale.dev/pool"

# Labels on what rackscale creates.
DEPLOYMENT_LABEL = "rackscale.dev/deployment"
REPLICA_LABEL = "rackscale.dev/replica"
SHARD_LABEL = "rackscale.dev/shard"
EXCLUSIVE_LABEL = "rackscale.dev/exclusive"
RACK_LABEL = "rackscale.dev/rack"  # sanitised to a label value; RACK_ANNOTATION is exact
LEADER_LABEL = "rackscale.dev/leader"
ROLE_LABEL = "rackscale.dev/role"  # with spec.roles: the pod's role
GROUP_LABEL = "rackscale.dev/group"  # with spec.roles: the pod's serving group
# A pod of a replica with a ComputeDomain names it: a node holds pods of at most one.
COMPUTE_DOMAIN_LABEL = "rackscale.dev/compute-domain"

# Annotations on the pods rackscale creates.
TEMPLATE_HASH_ANNOTATION = "rackscale.dev/template-hash"
SHARDS_ANNOTATION = "rackscale.dev/shards"
FIRST_RANK_ANNOTATION = "rackscale.dev/first-rank"
MODE_ANNOTATION = "rackscale.dev/mode"
RACK_ANNOTATION = "rackscale.dev/rack"  # the exact rack name; the label is sanitised
RACKS_ANNOTATION = "rackscale.dev/racks"
# `"true"` when the replica's GPUs reach each other over NVLink across nodes, as the placement
# engine decided (`ReplicaPlan.nvlink_crosses_nodes`); absent otherwise.
NVLINK_CROSSES_NODES_ANNOTATION = "rackscale.dev/nvlink-crosses-nodes"
# With spec.roles: each role's replicas in the group when the pod was created,
# `prefill=1,decode=1`; tells a role replica added by scaling from one that was lost.
GROUP_ROLES_ANNOTATION = "rackscale.dev/group-roles"
# With spec.roles: where the leaders of every role of the pod's group listen, a line
# `<role>=host:port,...` each; kept current as roles scale (a downward API volume shows it live).
LEADERS_ANNOTATION = "rackscale.dev/leaders"
