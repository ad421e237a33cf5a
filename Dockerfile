# RL Maze Training Service: the API and its training threads in one image.
#
#   docker build -t rl-maze-training-service .                       # CPU build of torch (default)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#                -t rl-maze-training-service:cuda .                  # CUDA build of the same torch version
#
# Settings come from the environment (see core/settings.py / .env.example); `python main.py` serves
# HOST:PORT with WORKERS uvicorn processes and applies database migrations at start-up.
FROM python:3.11-slim

# Where the torch wheel comes from. PyPI's Linux torch wheel is a CUDA build (gigabytes of nvidia-*
# packages), so the default is PyTorch's CPU-only index; point it at a CUDA index for GPU hosts.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# true: also install Ray (requirements-ray.txt) for EXECUTOR=ray and for Ray head/worker containers.
ARG WITH_RAY=false

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app

WORKDIR /app

# Dependency layer: rebuilt only when the pins change, not on every code edit.
COPY requirements.txt requirements-ray.txt constraints.txt ./
# torch first, without dependencies, at the exact version requirements.txt pins (a "+cpu" local
# version satisfies "==X"); the second install then takes torch's dependencies and everything else
# from the default index, under constraints.txt, and keeps the torch already installed.
RUN TORCH_VERSION="$(sed -n 's/^torch==\([^ ;#]*\).*/\1/p' requirements.txt)" \
    && test -n "$TORCH_VERSION" \
    && pip install --no-deps --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION" \
    && pip install -r requirements.txt -c constraints.txt \
    && if [ "$WITH_RAY" = "true" ]; then pip install -r requirements-ray.txt -c constraints.txt; fi \
    && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# Code layer.
COPY --chown=app:app . .
# The data directory exists in the image and belongs to `app`, so a fresh named volume mounted
# there inherits that owner and the service can write its models and local stores.
RUN mkdir -p /app/data && chown app:app /app/data

USER app

ENV HOST=0.0.0.0 \
    PORT=8001 \
    WORKERS=1 \
    DATA_DIR=/app/data

EXPOSE 8001
VOLUME ["/app/data"]

# /health answers 200 while the process serves (status "degraded" when PostgreSQL or MLflow is down),
# so this checks the service itself; python's urllib: the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8001'), timeout=4)"]

CMD ["python", "main.py"]
