# OPA: the static binary built from the Go module proxy into the cache.
ARG BASE
FROM ${BASE}
COPY opa /usr/local/bin/opa
