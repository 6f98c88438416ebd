"""The dev/test stack: real Kafka, OPA, Keycloak and Orthanc as local processes (no Docker)."""
