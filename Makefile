# tunnel: build, test and the lab cluster. Every target installs what it
# needs (Debian packages through the lab, Go modules through the go command).
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
GO ?= go
# The version every binary and the agent image's tag carry: git describe,
# with a hash of the changes for a dirty tree (cmd/release). Computed once.
VERSION ?= $(eval VERSION := $(shell $(GO) run ./cmd/release version))$(VERSION)
# The registry prefix the agent image is pushed to (make image) and that
# tunnel install pulls it from by default (make build): HOST[:PORT]/PATH.
REGISTRY ?=
LDFLAGS = -s -w -X tunnel.dev/tunnel/version.version=$(VERSION) $(if $(REGISTRY),-X tunnel.dev/tunnel/version.registry=$(REGISTRY))
# The lab's registry, and how to push to it (bin/lab status says so too).
LAB_REGISTRY := 10.209.0.1:5000/tunnel
LAB_PUSH := SSL_CERT_FILE=/var/lib/tunnel-lab/registry/ca-bundle.pem DOCKER_CONFIG=/var/lib/tunnel-lab/registry/docker
BIN := bin
LAB := $(BIN)/lab
# The end-to-end suite brings up a cluster: allow for a cold build of it.
E2E_TIMEOUT ?= 60m

.PHONY: all build image release ca-certs test unit e2e lab-up lab-down lab-status demo bench soak generate lint clean FORCE

all: build

build: $(BIN)/tunnel $(BIN)/tunnel-agent $(LAB)

# The go command decides what is stale; make always asks it.
$(BIN)/tunnel $(BIN)/tunnel-agent: FORCE
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/$(notdir $@)

$(LAB): FORCE
	$(GO) build -o $@ ./integration/cmd/lab

# The agent image (linux/amd64 and arm64, OCI index) built with
# go-containerregistry, no Docker; with REGISTRY set, pushed with the usual
# credential chain (~/.docker/config.json, DOCKER_CONFIG, credential
# helpers) as REGISTRY/tunnel-agent:VERSION. Prints the digest.
image: ca-certs
	$(GO) run ./cmd/release image --version '$(VERSION)' $(if $(REGISTRY),--registry '$(REGISTRY)')

# A release in dist/: tunnel for linux, darwin and windows on amd64 and
# arm64, tunnel-agent for linux, the agent image as an OCI layout, SHA256SUMS.
release: ca-certs
	$(GO) run ./cmd/release dist --version '$(VERSION)' --out dist $(if $(REGISTRY),--registry '$(REGISTRY)')

ca-certs:
	@test -f /etc/ssl/certs/ca-certificates.crt || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates)

# Everything: formatting and vet, unit tests, then the end-to-end suite on
# the lab cluster.
test: lint unit e2e

unit:
	$(GO) test -race -count=1 ./...

e2e: lab-up
	$(GO) test -tags e2e -p 1 -count=1 -timeout $(E2E_TIMEOUT) ./integration/...

lab-up: $(LAB)
	$(LAB) up

lab-down: $(LAB)
	$(LAB) down

lab-status: $(LAB)
	$(LAB) status

# The demo takes a user's path: the agent image pushed to the lab's
# registry, a CLI built to pull it from there.
demo: lab-up
	$(LAB_PUSH) $(MAKE) --no-print-directory build image REGISTRY=$(LAB_REGISTRY)
	./integration/demo/run.sh

# Go benchmarks, then the lab's table: tunnel against kubectl port-forward and
# the direct path, measured in one run.
bench: lab-up
	$(GO) test -run '^$$' -bench . -benchtime 3x -benchmem ./...
	$(GO) run ./integration/cmd/bench

# A soak of SOAK (30m unless set): not part of test. Prints a table a
# minute; fails when a process grew by more than 10% after minute five.
SOAK ?= 30m
soak: lab-up
	SOAK=$(SOAK) $(GO) test -tags 'e2e soak' -p 1 -count=1 -timeout 3h -run '^TestSoak$$' -v ./integration/

PROTOC_GEN_GO := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
generate:
	command -v protoc >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends protobuf-compiler)
	GOBIN=$(abspath $(BIN))/tools $(GO) install $(PROTOC_GEN_GO)
	GOBIN=$(abspath $(BIN))/tools $(GO) install $(PROTOC_GEN_GO_GRPC)
	PATH=$(abspath $(BIN))/tools:$$PATH $(GO) generate ./...

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./integration/...
	$(GO) vet -tags 'e2e soak' ./integration/
	GOOS=darwin $(GO) build ./...
	GOOS=windows $(GO) build ./...

clean:
	rm -rf $(BIN) dist
