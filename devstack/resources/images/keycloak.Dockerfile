# Keycloak's Maven Central distribution, on the JDK (>= 21) the process backend uses: bookworm
# packages no Java 21.
ARG BASE
FROM ${BASE}
COPY jdk /opt/java
COPY keycloak /opt/keycloak
ENV JAVA_HOME=/opt/java
