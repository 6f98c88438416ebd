# Orthanc and its DICOMweb plugin from Debian.
ARG BASE
FROM ${BASE}
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends orthanc orthanc-dicomweb \
 && rm -rf /var/lib/apt/lists/*
