# syntax=docker/dockerfile:1
#
# kibaship-dns01 container image.
#
# Stage "build" installs the package into a virtualenv at $VENV; the final
# stage copies only that virtualenv onto the same slim Python base, so no
# source tree, tests, pip cache or packaging tools reach the image.
#
# CI builds this file as it is with podman (only PYTHON_IMAGE is changed, to a
# debootstrap'd stand-in for the pinned base; no registry is reachable) and
# runs the image as deploy/base/deployment.yaml does: scripts/image-test.
# scripts/check-image lints it.

# Pin the exact Python patch release; both stages must use the same image
# because the virtualenv's interpreter is a symlink into the base image.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
ARG VENV=/opt/kibaship-dns01

FROM ${PYTHON_IMAGE} AS build
ARG VENV
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY setup.py ./
COPY kibaship_dns01 ./kibaship_dns01
COPY twisted ./twisted
# One RUN, in order: install without pip's cache; drop the packaging tools
# from the virtualenv (nothing installs anything at run time); byte-compile
# everything (the root filesystem is read-only at run time); build Twisted's
# plugin cache (dropin.cache) and prove the twistd plugin is in it -- a missing
# or stale cache makes twistd rescan and try to rewrite it on every start.
RUN python -m venv "$VENV" \
 && "$VENV/bin/pip" install --no-cache-dir . \
 && "$VENV/bin/pip" uninstall --yes pip setuptools wheel \
 && "$VENV/bin/python" -m compileall -q "$VENV/lib" \
 && "$VENV/bin/python" -c "from twisted.application.service import IServiceMaker; from twisted.plugin import getPlugins; import sys; names = [p.tapname for p in getPlugins(IServiceMaker)]; sys.exit(0 if 'kibaship-dns01' in names else 'kibaship-dns01 is not a twistd plugin: ' + repr(names))"

FROM ${PYTHON_IMAGE}
ARG VENV
LABEL org.opencontainers.image.title="kibaship-dns01" \
      org.opencontainers.image.description="cert-manager DNS01 webhook solver that asks Kibaship users to add TXT records"
ENV PATH="${VENV}/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A fixed numeric uid/gid, so Kubernetes can verify runAsNonRoot.
RUN groupadd --system --gid 65532 kibaship \
 && useradd --system --uid 65532 --gid 65532 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin kibaship
COPY --from=build ${VENV} ${VENV}
USER 65532:65532
WORKDIR /
EXPOSE 8443 9402
ENTRYPOINT ["twistd", "-n", "--pidfile=", "kibaship-dns01"]
