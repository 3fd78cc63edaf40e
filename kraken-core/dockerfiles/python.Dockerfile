# Kraken: Python apps. Build context: the app's checkout.
# Build args: BASE_IMAGE (a Python image), PORT (the manifest's port), RUN_CMD (the manifest's
# `run`), BUILD_CMD (the manifest's `build`, optional). Few instructions on purpose: each
# one is a layer commit, which costs about a second on slow storage.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}
ARG PORT=8000 RUN_CMD="python3 app.py" BUILD_CMD=""
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PORT=${PORT} RUN_CMD=${RUN_CMD}
WORKDIR /app
COPY . /app
RUN rm -f /app/.kraken.Dockerfile \
    && if [ -f requirements.txt ]; then python3 -m pip install --no-cache-dir -r requirements.txt; fi \
    && if [ -n "$BUILD_CMD" ]; then sh -c "$BUILD_CMD"; fi
CMD ["sh", "-c", "exec sh -c \"$RUN_CMD\""]
