"""FHIR R4 endpoints the hospital's systems call (consent for external reading)."""
