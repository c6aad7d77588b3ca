# tfprod serve in a container, for deploy/kubernetes/. Build it where a container daemon runs:
#   docker build -t tfprod:0.1.0 .
# (the project's test machine has none, so this file is checked by tests/test_deploy.py but
# not built there). The image runs any verb: `docker run tfprod:0.1.0 serve --help`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=1

WORKDIR /opt/tfprod
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /tmp tfprod

USER 10001:10001
# gRPC (--port) and REST (--rest_api_port), TF Serving's defaults.
EXPOSE 8500 8501
# tfprod serve drains on SIGTERM (readiness 503, in-flight requests finish within
# --drain_seconds), so the default stop signal is the right one.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tfprod"]
CMD ["serve", "--model_config_file=/etc/tfprod/models.config"]
