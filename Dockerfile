# The ovas image: the API under gunicorn, with the Kubernetes backend (what config/deploy runs).
#   docker build -t ovas:0.1.0 .
# Settings come from OVAS_* variables; see backends/kubernetes/README.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OVAS_BIND=0.0.0.0:8080

WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY ovas ovas
COPY blueprints blueprints
COPY backends backends
COPY config config
RUN pip install '.[kubernetes,serve,gateway]' \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent ovas

# A numeric user, so runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
CMD ["gunicorn", "--config", "config/gunicorn.conf.py"]
