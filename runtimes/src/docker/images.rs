//! Docker images: whether one exists, building one from an in-memory
//! context (a tar the engine unpacks), and pruning the tags an upgrade left.

use super::{call, clean_message, is_not_found, DockerRuntime};
use crate::{BuildSpec, Progress, Runtime, RuntimeError};
use bollard::query_parameters::BuildImageOptionsBuilder;
use futures_util::StreamExt;
use std::collections::HashMap;

pub(super) async fn exists(rt: &DockerRuntime, image: &str) -> Result<bool, RuntimeError> {
    match rt.docker.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(call(format!("inspect image {image}"))(e)),
    }
}

pub(super) async fn prune(
    rt: &DockerRuntime,
    repo: &str,
    keep: &str,
) -> Result<usize, RuntimeError> {
    let filters: HashMap<String, Vec<String>> =
        HashMap::from([("reference".to_string(), vec![repo.to_string()])]);
    let images = rt
        .docker
        .list_images(Some(
            bollard::query_parameters::ListImagesOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(call("list images"))?;
    let mut removed = 0;
    for image in images {
        for tag in image
            .repo_tags
            .iter()
            .filter(|t| t.as_str() != keep && t.split_once(':').is_some_and(|(r, _)| r == repo))
        {
            // Without force: an image a container still uses stays.
            let opts = bollard::query_parameters::RemoveImageOptionsBuilder::default()
                .force(false)
                .build();
            if rt.docker.remove_image(tag, Some(opts), None).await.is_ok() {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

pub(super) async fn build(
    rt: &DockerRuntime,
    spec: &BuildSpec,
    progress: Progress<'_>,
) -> Result<(), RuntimeError> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, (data, mode)) in &spec.files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(*mode);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, path, data.as_slice())
            .map_err(|source| RuntimeError::Io {
                doing: format!("packing the build context of {}", spec.tag),
                source,
            })?;
    }
    let context = tar.into_inner().map_err(|source| RuntimeError::Io {
        doing: format!("packing the build context of {}", spec.tag),
        source,
    })?;
    let buildargs: HashMap<String, String> = spec.build_args.clone().into_iter().collect();
    let labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
    let opts = BuildImageOptionsBuilder::default()
        .t(&spec.tag)
        .dockerfile(&spec.containerfile)
        .buildargs(&buildargs)
        .labels(&labels)
        .rm(true)
        .forcerm(true)
        .build();
    let mut stream = rt
        .docker
        .build_image(opts, None, Some(bollard::body_full(context.into())));
    let mut tail: Vec<String> = Vec::new();
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| RuntimeError::Build {
            image: spec.tag.clone(),
            message: clean_message(&e),
            log_tail: tail.join("\n"),
        })?;
        if let Some(err) = info.error_detail.and_then(|d| d.message) {
            return Err(RuntimeError::Build {
                image: spec.tag.clone(),
                message: err,
                log_tail: tail.join("\n"),
            });
        }
        for text in [info.stream, info.status].into_iter().flatten() {
            for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
                progress(line);
                tail.push(line.to_string());
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
        }
    }
    if !rt.image_exists(&spec.tag).await? {
        return Err(RuntimeError::Build {
            image: spec.tag.clone(),
            message: "the engine reported no error but the image does not exist".into(),
            log_tail: tail.join("\n"),
        });
    }
    Ok(())
}

/// `docker commit` with the whole image configuration given. The engine
/// merges the container's environment into a given one for every variable
/// the given one lacks, so each of the container's variables is named here:
/// the caller's value, PATH as it was, every other one empty.
pub(super) async fn commit(
    rt: &DockerRuntime,
    id: &str,
    image: &str,
    config: &crate::CommitSpec,
) -> Result<String, RuntimeError> {
    let (repo, tag) = match image.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (image, "latest"),
    };
    let options = bollard::query_parameters::CommitContainerOptionsBuilder::new()
        .container(id)
        .repo(repo)
        .tag(tag)
        .comment("bottle snapshot")
        .pause(true)
        .build();
    // The container's own variables, from the engine (never from inside
    // the container, which the agent controls): each is cleared unless the
    // caller gives it, PATH kept.
    let inspected = rt
        .docker
        .inspect_container(id, None)
        .await
        .map_err(call(format!("inspect container {id}")))?;
    let mut env = config.env.clone();
    let given = |k: &str| config.env.iter().any(|e| e.split('=').next() == Some(k));
    for var in inspected.config.and_then(|c| c.env).unwrap_or_default() {
        let key = var.split('=').next().unwrap_or_default().to_string();
        if key.is_empty() || given(&key) {
            continue;
        }
        env.push(if key == "PATH" {
            var
        } else {
            format!("{key}=")
        });
    }
    let body = bollard::models::ContainerConfig {
        env: Some(env),
        cmd: Some(config.cmd.clone()),
        working_dir: config.workdir.clone(),
        user: config.user.clone(),
        labels: Some(config.labels.clone().into_iter().collect()),
        ..Default::default()
    };
    let done = rt
        .docker
        .commit_container(options, body)
        .await
        .map_err(call(format!("commit {id} as {image}")))?;
    Ok(done.id)
}
