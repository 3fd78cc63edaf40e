# Kraken: static sites, the checkout's root served by busybox httpd. Build context: the
# app's checkout.
# Build args: BASE_IMAGE (an image with busybox httpd), PORT (the manifest's port), RUN_CMD
# (the manifest's `run`, to replace the server), BUILD_CMD (the manifest's `build`, optional,
# run in /site).
ARG BASE_IMAGE=busybox:stable
FROM ${BASE_IMAGE}
ARG PORT=8080
ARG RUN_CMD="httpd -f -v -p \$PORT -h /site"
ARG BUILD_CMD=""
ENV PORT=${PORT} \
    RUN_CMD=${RUN_CMD}
WORKDIR /site
COPY . /site
RUN rm -f /site/.kraken.Dockerfile
RUN if [ -n "$BUILD_CMD" ]; then sh -c "$BUILD_CMD"; fi
EXPOSE ${PORT}
CMD ["sh", "-c", "exec sh -c \"$RUN_CMD\""]
