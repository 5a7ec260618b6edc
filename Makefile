# rackscale: run `make help` for the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= default
CLUSTER ?= examples/cluster.yaml examples/rackpool-gb200.yaml
DEPLOYMENTS ?= examples/deepseek-r1.yaml examples/kimi-k2-exclusive.yaml examples/llama-405b-block.yaml examples/llama-8b.yaml
STAMP := $(VENV)/.installed

##@ General

.PHONY: help
help: ## Show the targets.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

.PHONY: venv
venv: $(STAMP) ## Create the virtual environment with everything the project needs.

##@ Development

.PHONY: test
test: lint test-unit test-e2e test-kind ## Everything CI runs: lint, fast tests, e2e on the local control plane, then on kind.

.PHONY: test-unit
test-unit: $(STAMP) ## Fast tests: models, CRDs, snapshot, engine, rendering, CLI (no cluster).
	$(PY) -m pytest tests

.PHONY: test-e2e
test-e2e: $(STAMP) e2e-binaries ## End-to-end tests on their own local control plane (or RACKSCALE_E2E_KUBECONFIG).
	RACKSCALE_CLUSTER_DIR=$(CURDIR)/.cluster-e2e $(PY) -m pytest e2e

.PHONY: lint
lint: $(STAMP) ## ruff, mypy (strict everywhere: operator, tests, e2e, bench, the example router), import-linter contracts, hadolint.
	$(VENV)/bin/ruff check operator tests e2e bench examples
	$(VENV)/bin/ruff format --check operator tests e2e bench examples
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint operator/Dockerfile

.PHONY: fmt
fmt: $(STAMP) ## Format and fix what ruff can.
	$(VENV)/bin/ruff format operator tests e2e bench examples
	$(VENV)/bin/ruff check --fix operator tests e2e bench examples

.PHONY: crds
crds: $(STAMP) ## Generate crds/ (and the chart's copy) and docs/api.md from the pydantic models.
	$(PY) -m rackscale.api.crd crds
	cp crds/*.yaml charts/rackscale/crds/
	$(PY) -m rackscale.api.docs > docs/api.md

##@ Running

.PHONY: demo
demo: $(STAMP) e2e-binaries ## The operator on the local control plane with fake GB200 racks, placing the examples.
	$(PY) -m e2e.demo up --profile $(PROFILE)

.PHONY: run
run: $(STAMP) ## Run the operator against the current kubeconfig (all namespaces).
	$(VENV)/bin/rackscale run --all-namespaces

.PHONY: plan
plan: $(STAMP) ## Offline what-if on the example cluster (or CLUSTER=... DEPLOYMENTS=...).
	$(VENV)/bin/rackscale plan $(addprefix --cluster ,$(CLUSTER)) -o table $(DEPLOYMENTS)

##@ Local control plane

.PHONY: e2e-binaries
e2e-binaries: ## Build etcd, kube-apiserver, kube-scheduler, kube-controller-manager, kubectl, kwok, helm and kube-score (cached by version).
	bash e2e/controlplane/build.sh
	bash e2e/controlplane/build-helm.sh
	bash e2e/controlplane/build-kube-score.sh

.PHONY: cluster-up
cluster-up: $(STAMP) e2e-binaries ## Start the local control plane with fake GPU racks (PROFILE=default).
	$(PY) -m e2e.cluster up --profile $(PROFILE) --wait

.PHONY: cluster-down
cluster-down: $(STAMP) ## Stop the local control plane (and the demo's operator) and remove its state.
	$(PY) -m e2e.demo down

##@ kind (real kubelets in Docker)

.PHONY: kind-up
kind-up: ## A kind cluster: 4 GPU trays in 2 racks, the fake-GPU device plugin, the operator from the chart (KIND_NODE_IMAGE=...).
	bash e2e/kind/up.sh

.PHONY: kind-down
kind-down: ## Delete the kind cluster, its network, and the Docker engine kind-up started.
	bash e2e/kind/down.sh

.PHONY: test-kind
test-kind: $(STAMP) ## Tests on kind: shard groups, a replica restarting as a unit, a stopped worker, device-plugin fallback.
	bash e2e/kind/test.sh

##@ Benchmarks

.PHONY: bench
bench: $(STAMP) e2e-binaries ## rackscale against kube-scheduler alone, every part, in one run; report in bench/results/.
	$(PY) -m bench

.PHONY: bench-quick
bench-quick: $(STAMP) ## The same at tiny sizes, without a cluster (writes to bench/out/).
	$(PY) -m bench --quick

.PHONY: bench-plan
bench-plan: $(STAMP) ## `rackscale plan` on 1,000 racks (18,000 nodes), 2,000 replicas; figures to bench/out/.
	$(PY) -m bench.plan_speed

.PHONY: bench-placement
bench-placement: $(STAMP) ## Placement engine speed at 100 and 1,000 racks; figures to bench/out/.
	$(PY) -m bench.placement
