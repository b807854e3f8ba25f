# tunnel: build, test and the lab cluster. Every target installs what it
# needs (Debian packages through the lab, Go modules through the go command).
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X tunnel.dev/tunnel/version.version=$(VERSION)
BIN := bin
LAB := $(BIN)/lab
# The end-to-end suite brings up a cluster: allow for a cold build of it.
E2E_TIMEOUT ?= 60m

.PHONY: all build test unit e2e lab-up lab-down lab-status demo bench generate lint clean FORCE

all: build

build: $(BIN)/tunnel $(BIN)/tunnel-agent $(LAB)

# The go command decides what is stale; make always asks it.
$(BIN)/tunnel $(BIN)/tunnel-agent: FORCE
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/$(notdir $@)

$(LAB): FORCE
	$(GO) build -o $@ ./integration/cmd/lab

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

demo: build lab-up
	./integration/demo/run.sh

# Go benchmarks, then the lab's table: tunnel against kubectl port-forward and
# the direct path, measured in one run.
bench: lab-up
	$(GO) test -run '^$$' -bench . -benchtime 3x -benchmem ./...
	$(GO) run ./integration/cmd/bench

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
	GOOS=darwin $(GO) build ./...
	GOOS=windows $(GO) build ./...

clean:
	rm -rf $(BIN)
