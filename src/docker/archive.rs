//! Volume trees in and out of containers through Docker's archive API, which works on stopped
//! and created-but-never-started containers (the daemon mounts the container's volumes for the
//! copy): the tar stream of a directory, extraction into one, the root directory's metadata,
//! and small files read whole.
//!
//! Where it sits: Inside `docker`, an adapter: sees `format` only.

use crate::format::RootMeta;
use anyhow::{Context, Result, anyhow};
use bollard::Docker;
use bollard::query_parameters::{DownloadFromContainerOptions, UploadToContainerOptions};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};

/// An error from Docker in the middle of an archive stream.
#[derive(Debug, thiserror::Error)]
#[error("Docker archive stream failed: {0}")]
pub struct DockerStreamError(#[source] pub bollard::errors::Error);

/// The tree under `path` in the container as a tar stream whose root is that directory
/// (entries `./…`). A task of its own reads it ahead, up to 16 MiB, so dockerd
/// goes on writing the archive while the stages after it (the chunker, the compressor) work:
/// without it, the two take turns and a volume's read costs the sum of both.
pub fn tar_of(
    docker: &Docker,
    container_id: &str,
    path: &str,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + use<> {
    let options = DownloadFromContainerOptions {
        path: format!("{}/.", path.trim_end_matches('/')),
    };
    let mut stream = docker
        .download_from_container(container_id, Some(options))
        .map_err(|e| std::io::Error::other(DockerStreamError(e)));
    let (ahead, read) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(READ_AHEAD);
    tokio::spawn(async move {
        while let Some(piece) = stream.next().await {
            let mut bytes = match piece {
                Ok(bytes) => bytes,
                Err(error) => {
                    let _ = ahead.send(Err(error)).await;
                    return;
                }
            };
            // In slices of at most READ_AHEAD_PIECE, so the read-ahead is bounded in bytes
            // whatever size the HTTP body's pieces have.
            while !bytes.is_empty() {
                let slice = bytes.split_to(bytes.len().min(READ_AHEAD_PIECE));
                // The reader went away (the backup stopped): so does this task, and the request.
                if ahead.send(Ok(slice)).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut read = read;
    futures::stream::poll_fn(move |cx| read.poll_recv(cx))
}

/// The first 512 bytes of the tar stream of `path` (its root entry's header), the rest left
/// unread: what Docker says the directory is.
pub async fn first_block(docker: &Docker, container_id: &str, path: &str) -> Result<Vec<u8>> {
    let options = DownloadFromContainerOptions {
        path: format!("{}/.", path.trim_end_matches('/')),
    };
    let mut stream = docker.download_from_container(container_id, Some(options));
    let mut block = Vec::with_capacity(1024);
    while block.len() < 512 {
        match stream.next().await {
            Some(piece) => block.extend_from_slice(&piece?),
            None => break,
        }
    }
    block.truncate(512);
    Ok(block)
}

/// Slices of an archive stream read ahead: at most 16 MiB (with the one HTTP body piece they
/// may be cut from).
const READ_AHEAD: usize = 256;
const READ_AHEAD_PIECE: usize = 64 << 10;

/// Extracts a tar stream into `path` in the container, keeping owners (`copyUIDGID`).
pub async fn extract_into(
    docker: &Docker,
    container_id: &str,
    path: &str,
    tar: impl Stream<Item = std::io::Result<Bytes>> + Send + 'static,
) -> Result<()> {
    let options = UploadToContainerOptions {
        path: path.to_string(),
        // "true", not "1": Podman's API reads only the word (Docker takes both).
        copy_uidgid: Some("true".into()),
        ..Default::default()
    };
    docker
        .upload_to_container(container_id, Some(options), bollard::body_try_stream(tar))
        .await
        .map_err(|e| anyhow!("Docker could not extract into {path}: {e}"))
}

/// Sets mode, owner and mtime of the directory `path` itself, which extracting a `./` entry
/// does not: a one-entry tar is extracted into its parent.
pub async fn set_dir_meta(
    docker: &Docker,
    container_id: &str,
    path: &str,
    meta: &RootMeta,
) -> Result<()> {
    let path = path.trim_end_matches('/');
    let (parent, name) = path
        .rsplit_once('/')
        .ok_or_else(|| anyhow!("{path} is not absolute"))?;
    if name.is_empty() {
        return Ok(());
    }
    let mut header = tokio_tar::Header::new_gnu();
    header.set_entry_type(tokio_tar::EntryType::Directory);
    header.set_path(format!("{name}/"))?;
    header.set_mode(meta.mode);
    header.set_uid(meta.uid);
    header.set_gid(meta.gid);
    header.set_mtime(meta.mtime);
    header.set_size(0);
    header.set_cksum();
    let mut tar = header.as_bytes().to_vec();
    tar.extend_from_slice(&[0u8; 1024]);
    let parent = if parent.is_empty() { "/" } else { parent };
    extract_into(
        docker,
        container_id,
        parent,
        futures::stream::once(async { Ok(Bytes::from(tar)) }),
    )
    .await
}

/// Reads a small text file from a container (running or not) through the archive API.
pub async fn read_file(docker: &Docker, container_id: &str, path: &str) -> Result<String> {
    let options = DownloadFromContainerOptions {
        path: path.to_string(),
    };
    let stream = docker
        .download_from_container(container_id, Some(options))
        .map_err(std::io::Error::other);
    let mut archive = tokio_tar::Archive::new(tokio_util::io::StreamReader::new(stream));
    let mut entries = archive.entries()?;
    let mut entry = entries
        .next()
        .await
        .ok_or_else(|| anyhow!("{path} is empty"))?
        .with_context(|| format!("cannot read {path}"))?;
    if entry.header().entry_type() != tokio_tar::EntryType::Regular
        || entry.effective_size() > 64 * 1024
    {
        return Err(anyhow!("{path} is not a small regular file"));
    }
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut entry, &mut text).await?;
    Ok(text.trim().to_string())
}
