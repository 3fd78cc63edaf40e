# Kraken: Node apps. Build context: the app's checkout.
# Build args: BASE_IMAGE (a Node image), PORT (the manifest's port), RUN_CMD (the manifest's
# `run`), BUILD_CMD (the manifest's `build`, optional). Few instructions on purpose: each
# one is a layer commit, which costs about a second on slow storage.
ARG BASE_IMAGE=node:20-alpine
FROM ${BASE_IMAGE}
ARG PORT=3000 RUN_CMD="npm start" BUILD_CMD=""
ENV NODE_ENV=production PORT=${PORT} RUN_CMD=${RUN_CMD}
WORKDIR /app
COPY . /app
RUN rm -f /app/.kraken.Dockerfile \
    && if [ -f package.json ]; then npm install --omit=dev; fi \
    && if [ -n "$BUILD_CMD" ]; then sh -c "$BUILD_CMD"; fi
CMD ["sh", "-c", "exec sh -c \"$RUN_CMD\""]
