//! The image side of the Docker runtime: building an app's image from its checkout and
//! removing it again.

use super::call::{API_TIMEOUT, Failure, backend, status_code, within};
use super::context::{self, CUSTOM_DOCKERFILE, KRAKEN_DOCKERFILE};
use super::convert::{self, LineSplitter};
use super::{
    DockerRuntime, LABEL_DEPLOYMENT, LABEL_GENERATION, LABEL_MANAGED, LABEL_OWNER, RUNTIME,
};
use crate::manifest::Lang;
use crate::model::{LogLine, LogStream};
use crate::runtime::{Artifact, BuildRequest, LogSink, RuntimeError};
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    BuildImageOptions, BuildImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveImageOptionsBuilder,
};
use futures::StreamExt;
use std::collections::HashMap;
use tracing::{info, warn};

/// Builds hold it shared, image removals exclusively. Removing an image also removes its
/// untagged parent layers, and a build running at the same time may just have picked one of
/// them from the cache (two apps whose Dockerfiles start alike): the build would then fail
/// on a layer that vanished under it. Process-wide, since every runtime value of a process
/// usually talks to the same daemon.
static IMAGE_REMOVAL: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

impl DockerRuntime {
    /// [`Runtime::build`](crate::runtime::Runtime::build): see the module documentation.
    pub(super) async fn build_image(
        &self,
        request: &BuildRequest,
        log: LogSink,
    ) -> Result<Artifact, RuntimeError> {
        self.ready().await?;
        let manifest = &request.manifest;
        let lang = manifest.config.lang;
        let base = match context::embedded_dockerfile(lang) {
            Some(text) => text.to_owned(),
            None => read_custom_dockerfile(&request.source_dir).await?,
        };
        let generation = request.generation.to_string();
        let dockerfile = context::with_labels(
            &base,
            &[
                (LABEL_MANAGED, "true"),
                (LABEL_OWNER, &self.config.node_label),
                (LABEL_DEPLOYMENT, request.deployment.as_str()),
                (LABEL_GENERATION, &generation),
            ],
        );

        let tag = format!(
            "{}:{}",
            convert::image_repository(&manifest.app.name),
            convert::image_tag(&request.deployment, request.generation)
        );
        let mut args = HashMap::from([("PORT".to_owned(), manifest.config.port.to_string())]);
        if let Some(base) = self.config.base_image(lang) {
            args.insert("BASE_IMAGE".to_owned(), base.to_owned());
        }
        if lang != Lang::Custom {
            if let Some(run) = &manifest.config.run {
                args.insert("RUN_CMD".to_owned(), run.clone());
            }
            if let Some(build) = &manifest.config.build {
                args.insert("BUILD_CMD".to_owned(), build.clone());
            }
        }
        let options = BuildImageOptionsBuilder::new()
            .dockerfile(KRAKEN_DOCKERFILE)
            .t(&tag)
            .rm(true)
            .forcerm(true)
            .buildargs(&args)
            .build();

        info!(
            deployment = %request.deployment,
            generation = request.generation,
            image = %tag,
            lang = ?lang,
            "building image"
        );
        // Held until the image is tagged: see IMAGE_REMOVAL.
        let _building = IMAGE_REMOVAL.read().await;
        let (body, packer) = context::stream_context(request.source_dir.clone(), dockerfile);
        let built = tokio::time::timeout(
            self.config.build_timeout,
            self.run_build(options, body, &log),
        )
        .await;
        // The upload has ended one way or the other, so the packer ends too.
        let packed = packer.await.map_err(|e| RuntimeError::Backend {
            runtime: RUNTIME,
            reason: format!("packing the build context: {e}"),
        })?;
        match built {
            Err(_) => {
                return Err(RuntimeError::BuildFailed {
                    reason: format!("the build took longer than {:?}", self.config.build_timeout),
                });
            }
            Ok(Err(failed @ RuntimeError::BuildFailed { .. })) => {
                warn!(deployment = %request.deployment, cause = %failed, "build failed");
                return Err(failed);
            }
            Ok(Err(other)) => {
                return Err(match packed {
                    Err(source) if source.kind() != std::io::ErrorKind::BrokenPipe => {
                        RuntimeError::Io {
                            context: format!(
                                "packing the build context {}",
                                request.source_dir.display()
                            ),
                            source,
                        }
                    }
                    _ => other,
                });
            }
            Ok(Ok(())) => {
                if let Err(source) = packed {
                    return Err(RuntimeError::Io {
                        context: format!(
                            "packing the build context {}",
                            request.source_dir.display()
                        ),
                        source,
                    });
                }
            }
        }

        let image = within(API_TIMEOUT, self.docker.inspect_image(&tag))
            .await
            .map_err(RuntimeError::from)?;
        let id = image.id.ok_or_else(|| RuntimeError::Backend {
            runtime: RUNTIME,
            reason: format!("the daemon reported no id for the image {tag}"),
        })?;
        info!(deployment = %request.deployment, generation = request.generation, image = %tag, id = %id, "image built");
        Ok(Artifact {
            id,
            deployment: request.deployment.clone(),
            generation: request.generation,
        })
    }

    /// Streams the build, forwarding its output to `log`.
    async fn run_build(
        &self,
        options: BuildImageOptions,
        body: context::ContextStream,
        log: &LogSink,
    ) -> Result<(), RuntimeError> {
        let mut output =
            self.docker
                .build_image(options, None, Some(bollard::body_try_stream(body)));
        let mut lines = LineSplitter::default();
        let send = |text: String| async {
            // A closed log receiver must not fail the build.
            let _ = log.send(LogLine::new(LogStream::Build, text)).await;
        };
        while let Some(item) = output.next().await {
            match item {
                Ok(info) => {
                    if let Some(text) = info.stream {
                        for line in lines.push(&text) {
                            send(line).await;
                        }
                    } else if let Some(status) = info.status {
                        send(status).await;
                    }
                }
                Err(err) => {
                    if let Some(rest) = lines.finish() {
                        send(rest).await;
                    }
                    let failure = match err {
                        DockerError::DockerStreamError { error } => {
                            RuntimeError::BuildFailed { reason: error }
                        }
                        // The daemon refused the build itself (bad Dockerfile, unknown
                        // instruction, missing base image...): that is the builder's word too.
                        DockerError::DockerResponseServerError { message, .. } => {
                            RuntimeError::BuildFailed { reason: message }
                        }
                        other => backend(other),
                    };
                    if let RuntimeError::BuildFailed { reason } = &failure {
                        send(reason.clone()).await;
                    }
                    return Err(failure);
                }
            }
        }
        if let Some(rest) = lines.finish() {
            send(rest).await;
        }
        Ok(())
    }

    /// Removes the image built for the artifact's deployment and generation. Refuses an
    /// image that is not this runtime's or that a container (anyone's) still uses; an
    /// image already gone is fine. Only Kraken's own tags are removed: an image someone
    /// else also tagged stays.
    pub(super) async fn remove_image(&self, artifact: &Artifact) -> Result<(), RuntimeError> {
        self.ready().await?;
        let _removing = IMAGE_REMOVAL.write().await;
        let image = match within(API_TIMEOUT, self.docker.inspect_image(&artifact.id)).await {
            Ok(image) => image,
            Err(Failure::Docker(e)) if status_code(&e) == Some(404) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let labels = image.config.as_ref().and_then(|c| c.labels.as_ref());
        let matches = self.owns(labels)
            && labels.is_some_and(|l| {
                l.get(LABEL_DEPLOYMENT).map(String::as_str) == Some(artifact.deployment.as_str())
                    && l.get(LABEL_GENERATION) == Some(&artifact.generation.to_string())
            });
        if !matches {
            return Err(RuntimeError::Backend {
                runtime: RUNTIME,
                reason: format!(
                    "refusing to remove image {}: it is not the one this runtime built for {} generation {}",
                    artifact.id, artifact.deployment, artifact.generation
                ),
            });
        }
        let id = image.id.clone().unwrap_or_else(|| artifact.id.clone());
        let filters = HashMap::from([("ancestor", vec![id.clone()])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let users = within(API_TIMEOUT, self.docker.list_containers(Some(options)))
            .await
            .map_err(RuntimeError::from)?;
        if !users.is_empty() {
            let names: Vec<String> = users
                .iter()
                .filter_map(|c| c.names.as_ref().and_then(|n| n.first()).cloned())
                .collect();
            return Err(RuntimeError::Backend {
                runtime: RUNTIME,
                reason: format!("image {id} is still used by {}", names.join(", ")),
            });
        }
        let ours: Vec<&String> = image
            .repo_tags
            .iter()
            .flatten()
            .filter(|t| t.starts_with("kraken/"))
            .collect();
        let others = image.repo_tags.iter().flatten().count() - ours.len();
        let targets: Vec<&str> = if ours.is_empty() && others == 0 {
            vec![id.as_str()]
        } else {
            ours.iter().map(|t| t.as_str()).collect()
        };
        for target in targets {
            let options = RemoveImageOptionsBuilder::new().force(false).build();
            match within(
                API_TIMEOUT,
                self.docker.remove_image(target, Some(options), None),
            )
            .await
            {
                Ok(_) => {}
                Err(Failure::Docker(e)) if status_code(&e) == Some(404) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if others > 0 {
            info!(image = %id, "image kept: it carries tags that are not Kraken's");
        } else {
            info!(image = %id, deployment = %artifact.deployment, generation = artifact.generation, "image removed");
        }
        Ok(())
    }
}

/// The repository's own Dockerfile (`lang = "custom"`), read whole (it is small).
async fn read_custom_dockerfile(source_dir: &std::path::Path) -> Result<String, RuntimeError> {
    let path = source_dir.join(CUSTOM_DOCKERFILE);
    let missing = || RuntimeError::BuildFailed {
        reason: format!("lang = \"custom\" needs a {CUSTOM_DOCKERFILE} at the repository root"),
    };
    let meta = tokio::fs::metadata(&path).await.map_err(|_| missing())?;
    if !meta.is_file() {
        return Err(missing());
    }
    if meta.len() > context::MAX_DOCKERFILE {
        return Err(RuntimeError::BuildFailed {
            reason: format!(
                "the {CUSTOM_DOCKERFILE} is {} bytes, more than the {} accepted",
                meta.len(),
                context::MAX_DOCKERFILE
            ),
        });
    }
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|source| RuntimeError::Io {
            context: format!("reading {}", path.display()),
            source,
        })?;
    String::from_utf8(bytes).map_err(|_| RuntimeError::BuildFailed {
        reason: format!("the {CUSTOM_DOCKERFILE} is not UTF-8 text"),
    })
}
