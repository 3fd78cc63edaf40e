# Kraken: static sites, the checkout's root served by busybox httpd. Build context: the
# app's checkout.
# Build args: BASE_IMAGE (an image with busybox httpd), PORT (the manifest's port), RUN_CMD
# (the manifest's `run`, to replace the server), BUILD_CMD (the manifest's `build`, optional,
# run in /site). Few instructions on purpose: each one is a layer commit, which costs about
# a second on slow storage.
ARG BASE_IMAGE=busybox:stable
FROM ${BASE_IMAGE}
ARG PORT=8080 RUN_CMD="httpd -f -v -p \$PORT -h /site" BUILD_CMD=""
ENV PORT=${PORT} RUN_CMD=${RUN_CMD}
WORKDIR /site
COPY . /site
RUN rm -f /site/.kraken.Dockerfile \
    && if [ -n "$BUILD_CMD" ]; then sh -c "$BUILD_CMD"; fi
CMD ["sh", "-c", "exec sh -c \"$RUN_CMD\""]
