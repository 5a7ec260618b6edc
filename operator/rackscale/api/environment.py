"""The environment every container of a shard gets: names and meanings, part of the API contract.

Rendering sets these (rackscale.render.pods); docs/api.md lists them from here. They are defined
before the container's own `env`, so its values and its `command`/`args` may use `$(NAME)`.
"""

from __future__ import annotations

# A port for the engines' own rendezvous (torch.distributed, vLLM's data-parallel RPC, SGLang's
# --dist-init-addr). A pod has its own network namespace, so nothing outside the pod uses it; it
# is not vLLM's (29500, 29501, 29550), SGLang's (30000) or Ray's (6379) default.
COORDINATION_PORT = 29600

# (name, meaning), in the order the variables are set.
ENVIRONMENT: tuple[tuple[str, str], ...] = (
    ("RACKSCALE_REPLICA", "The replica index, 0 to replicas - 1."),
    ("RACKSCALE_SHARD", "The shard (pod) index inside the replica; 0 is the leader."),
    ("RACKSCALE_SHARDS", "Pods of the replica."),
    ("RACKSCALE_WORLD_SIZE", "GPUs of the replica: tensor x pipeline x data."),
    (
        "RACKSCALE_FIRST_RANK",
        "Rank of the pod's first GPU; ranks are numbered tensor-fastest, "
        "rank = t + tensor * (d + data * p), and the pod holds ranks "
        "[first, first + its GPUs).",
    ),
    ("RACKSCALE_TENSOR_PARALLEL", "spec.parallelism.tensor."),
    ("RACKSCALE_PIPELINE_PARALLEL", "spec.parallelism.pipeline."),
    ("RACKSCALE_DATA_PARALLEL", "spec.parallelism.data."),
    ("RACKSCALE_EXPERT_PARALLEL", "spec.parallelism.expert."),
    (
        "RACKSCALE_LEADER_ADDRESS",
        "DNS name of the replica's shard 0 under the headless Service "
        "(`<name>-<replica>-0.<name>-shards.<namespace>.svc`); it resolves before the "
        "leader is Ready.",
    ),
    ("RACKSCALE_RACK", "The pod's rack (rack mode); empty in device-plugin mode."),
    (
        "RACKSCALE_NNODES",
        "The engine's node count: a replica's pods are its nodes (--nnodes). "
        "Equal to RACKSCALE_SHARDS.",
    ),
    (
        "RACKSCALE_NODE_RANK",
        "The pod's node rank among them (--node-rank); equal to RACKSCALE_SHARD.",
    ),
    (
        "RACKSCALE_DATA_PARALLEL_START_RANK",
        "The data-parallel rank of the pod's first GPU, d = (first rank / tensor) mod data "
        "(vLLM's --data-parallel-start-rank).",
    ),
    (
        "RACKSCALE_DATA_PARALLEL_SIZE_LOCAL",
        "How many data-parallel ranks the pod's GPUs belong to (vLLM's "
        "--data-parallel-size-local). When tensor is larger than a pod's GPUs, a data-parallel "
        "rank spans pods and each of them says 1.",
    ),
    (
        "RACKSCALE_COORDINATION_PORT",
        f"{COORDINATION_PORT}, always: a port for the engines' rendezvous on the leader "
        "(--master-port, --data-parallel-rpc-port, --dist-init-addr). Not configurable; "
        "write another port in the flags to use one.",
    ),
    (
        "LWS_LEADER_ADDRESS",
        "As in LeaderWorkerSet: the leader's DNS name (RACKSCALE_LEADER_ADDRESS).",
    ),
    (
        "LWS_GROUP_SIZE",
        "As in LeaderWorkerSet: pods of the replica, leader included (RACKSCALE_SHARDS).",
    ),
    (
        "LWS_WORKER_INDEX",
        "As in LeaderWorkerSet: 0 for the leader, 1..n-1 for the workers (RACKSCALE_SHARD).",
    ),
)

# With spec.roles, after those: which role replica the pod belongs to, and where the leaders of
# every role of its serving group listen (a router such as vLLM's disaggregated proxy, llm-d's
# or Dynamo's is pointed at them). `<ROLE>` is the role's name upper-cased, `-` as `_`.
ROLE_ENVIRONMENT: tuple[tuple[str, str], ...] = (
    ("RACKSCALE_ROLE", "With spec.roles: the pod's role (spec.roles[].name)."),
    ("RACKSCALE_GROUP", "With spec.roles: the pod's serving group, 0 to spec.replicas - 1."),
    (
        "RACKSCALE_ROLE_INDEX",
        "With spec.roles: the pod's replica of its role inside the group, 0 to "
        "spec.roles[].replicas - 1. RACKSCALE_REPLICA numbers role replicas across the "
        "deployment: group x 1000 + the role's position in spec.roles x 100 + this index.",
    ),
    (
        "RACKSCALE_<ROLE>_LEADERS",
        "With spec.roles, one per role: `host:port` of the leader (shard 0) of each replica of "
        "that role in the pod's group, comma-separated, the host under the headless Service "
        "(`<name>-g<group>-<role>-<index>-0.<name>-shards.<namespace>.svc`), the port the "
        "role's (spec.roles[].port, else spec.port). For example RACKSCALE_PREFILL_LEADERS. "
        "Set when the pod is created: after a role is scaled, the pods that stay keep the list "
        "they had; the pod's annotation `rackscale.dev/leaders` (`<role>=host:port,...` a line) "
        "follows every change, for a downward API volume to show.",
    ),
)

# Set on every container, unless its env already names them, when the replica's NVLink domain is
# larger than a node (a pool with nvlinkDomain Rack and the replica's pods on several nodes):
# NCCL uses multi-node NVLink only when told to.
MULTI_NODE_NVLINK_ENV: tuple[tuple[str, str], ...] = (
    ("NCCL_MNNVL_ENABLE", "1"),
    ("NCCL_CUMEM_ENABLE", "1"),
)
