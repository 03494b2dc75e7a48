# One image for web, worker and beat. Bundled models ship in the repository; the base encoder in a wheel.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    MLSITE_VAR_DIR=/app/var

WORKDIR /app
COPY requirements.txt .
# The CPU index provides torch==2.13.0+cpu, which satisfies the exact pin without CUDA wheels.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt

COPY . .
RUN useradd --create-home --uid 10001 mlsite \
    && mkdir -p /app/var \
    && DEBUG=0 python manage.py collectstatic --noinput \
    && chown -R mlsite:mlsite /app/var
USER mlsite

EXPOSE 8000
CMD ["granian", "--interface", "wsgi", "--host", "0.0.0.0", "--port", "8000", "--workers", "2", "--blocking-threads", "16", "--no-ws", "--http1-buffer-size", "16384", "--blocking-threads-idle-timeout", "600", "--respawn-failed-workers", "--workers-kill-timeout", "10", "mlsite.wsgi:application"]
