# An effe container image: effe-host, one effe, the C runtime they link and the CA bundle, on
# nothing (no shell, no package manager). Base images are not pulled: deploy/rootfs.sh assembles
# the root filesystem from a release build, and `make image EFFE=hello` (or
# `make image EFFE_SO=/path/libfoo.so`) runs it and this build. See deploy/kubernetes/README.md.
FROM scratch

# Where deploy/rootfs.sh put the root filesystem, in the build context (the repository root).
ARG ROOTFS=target/image/hello/rootfs
COPY ${ROOTFS}/ /

# Numeric, so that Kubernetes' runAsNonRoot can verify it without an /etc/passwd lookup.
USER 65532:65532
# A container logs to stderr: it has no /dev/log for syslog to reach.
ENV EFFE_PLUGIN=/effe/libeffe.so \
    EFFE_SYSLOG=off
# The service (HTTP/1.1, h2c, or HTTPS with --tls-cert) and the admin listener (probes, metrics).
EXPOSE 8080 9090
# effe-host's own probe (GET /readyz on the admin listener): the image has no shell or curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/effe-host", "--probe"]
ENTRYPOINT ["/effe-host"]
