# The local base image: the debootstrap root filesystem (imported as ROOTFS) with this machine's
# extra CA certificates, so builds that go out through the machine's egress verify TLS.
ARG ROOTFS
FROM ${ROOTFS}
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates --fresh > /dev/null
CMD ["/bin/bash"]
