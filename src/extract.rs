//! Getting data out without touching the app: a backup's volumes, or parts of them, into a
//! host directory (`restore --to-dir`) or to stdout as a tar or a raw file (`dump`).
//!
//! The bytes go through the same checks as a restore into volumes: the manifest is
//! authenticated by the caller ([`crate::repo::Repo::read`]), each volume is downloaded once
//! into the ciphertext spool and verified end to end there (size, sha256, decryption, every tar
//! entry under the entry policy), and only then read back and written. Nothing here talks to
//! Docker: it runs on a laptop with the owner key and the bucket's credentials.
//!
//! Where it sits: An operation beside `restore`: uses `repo` and `pipeline::open`.

use crate::format::{Manifest, SourceKind, VolumeRecord};
use crate::keys::BoxIdentity;
use crate::pipeline::open;
use crate::repo::Repo;
use anyhow::{Context, Result, anyhow};
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// What `--to-dir` wrote for one volume.
#[derive(Debug)]
pub struct Extracted {
    pub volume: String,
    pub dir: PathBuf,
    pub entries: u64,
    /// Device nodes left out (a host directory gets none), and setuid/setgid bits dropped.
    pub skipped_devices: u64,
}

/// The records `volumes` names (full or compose names; every one when empty).
pub fn select<'m>(manifest: &'m Manifest, volumes: &[String]) -> Result<Vec<&'m VolumeRecord>> {
    if volumes.is_empty() {
        return Ok(manifest.volumes.iter().collect());
    }
    volumes
        .iter()
        .map(|wanted| {
            manifest
                .volumes
                .iter()
                .find(|v| &v.name == wanted || v.compose_volume.as_ref() == Some(wanted))
                .ok_or_else(|| {
                    crate::error::usage(format!(
                        "backup {} holds no volume '{}'; it holds: {}",
                        manifest.backup_id,
                        crate::text::printable(wanted),
                        manifest
                            .volumes
                            .iter()
                            .map(|v| crate::text::printable(
                                v.compose_volume.as_deref().unwrap_or(&v.name)
                            ))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
        })
        .collect()
}

/// The tar of one volume, verified end to end in the spool first, then read back from it
/// under the entry policy.
pub async fn verified_tar(
    repo: &Repo,
    manifest: &Manifest,
    record: &VolumeRecord,
    identities: &Arc<Vec<BoxIdentity>>,
    spool_dir: &Path,
) -> Result<impl AsyncRead + Send + Unpin + use<>> {
    let spooled = verified(repo, manifest, record, identities, spool_dir).await?;
    Ok(open::open_spooled(&spooled, record, identities).await?)
}

/// One volume downloaded into the spool and verified there end to end.
async fn verified(
    repo: &Repo,
    manifest: &Manifest,
    record: &VolumeRecord,
    identities: &Arc<Vec<BoxIdentity>>,
    spool_dir: &Path,
) -> Result<open::Spooled> {
    let at = repo.volume_at(&manifest.app, &manifest.backup_id, record);
    let (spooled, _) = open::fetch_verified(&at, record, identities, spool_dir)
        .await
        .map_err(anyhow::Error::new)
        .with_context(|| {
            format!(
                "verifying volume {} of backup {} ({at}); nothing was written",
                crate::text::printable(&record.name),
                manifest.backup_id
            )
        })?;
    Ok(spooled)
}

/// The folder under `--to-dir` a volume goes into: its compose name, else its name (a bind
/// mount's made plain).
pub fn folder_name(record: &VolumeRecord) -> String {
    match (&record.kind, &record.compose_volume) {
        (SourceKind::Volume, Some(compose)) => compose.clone(),
        (SourceKind::Volume, None) => record.name.clone(),
        (SourceKind::Bind, _) => record
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect(),
    }
}

/// Writes the selected volumes (the parts `includes` names, or all) into `dir/<volume>/`,
/// each a directory that must not exist yet or be empty: nothing is ever overwritten.
pub async fn to_dir(
    repo: &Repo,
    manifest: &Manifest,
    records: &[&VolumeRecord],
    identities: &Arc<Vec<BoxIdentity>>,
    spool_dir: &Path,
    dir: &Path,
    includes: &[String],
) -> Result<Vec<Extracted>> {
    let mut done = Vec::new();
    for record in records {
        let target = dir.join(folder_name(record));
        fresh_target(dir, &target)?;
        let spooled = verified(repo, manifest, record, identities, spool_dir).await?;
        // A hard link asked for whose file is not: that file comes too (its data is there).
        let mut includes = includes.to_vec();
        if !includes.is_empty() {
            let tar = open::open_spooled(&spooled, record, identities).await?;
            includes.extend(link_targets(tar, &includes).await?);
        }
        let tar = open::open_spooled(&spooled, record, identities).await?;
        let (entries, skipped_devices) = unpack(tar, &target, &includes)
            .await
            .with_context(|| format!("writing volume {} into {}", record.name, target.display()))?;
        done.push(Extracted {
            volume: record.name.clone(),
            dir: target,
            entries,
            skipped_devices,
        });
    }
    Ok(done)
}

/// Makes `target` (in `dir`) a new directory, or accepts an existing one only when it is
/// a real directory (no symlink), empty, this user's and writable by no one else: others who
/// could write there could swap a directory for a symlink while entries are written by path.
fn fresh_target(dir: &Path, target: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let refuse = |why: &str| {
        crate::error::usage(format!(
            "{} {why}; lifeboat writes only into a new directory, or an empty one of this user's that no one else can write: give another --to-dir",
            target.display()
        ))
    };
    let euid = unsafe { libc::geteuid() };
    let dir_meta = std::fs::metadata(dir)?;
    if dir_meta.uid() != euid || dir_meta.mode() & 0o022 != 0 {
        return Err(crate::error::usage(format!(
            "{} belongs to another user or others can write it; lifeboat writes only under a directory of this user's that no one else can write: give another --to-dir",
            dir.display()
        )));
    }
    match std::fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(target)
            .with_context(|| format!("cannot create {}", target.display())),
        Err(e) => Err(e).with_context(|| format!("cannot inspect {}", target.display())),
        Ok(meta) if !meta.is_dir() => Err(refuse("is not a directory")),
        Ok(meta) if meta.uid() != euid || meta.mode() & 0o022 != 0 => {
            Err(refuse("belongs to another user or others can write it"))
        }
        Ok(_) => match std::fs::read_dir(target)?.next() {
            None => Ok(()),
            Some(_) => Err(refuse("is not empty; lifeboat overwrites nothing")),
        },
    }
}

/// A tar path as `a/b` (no `./`, no leading or trailing `/`).
fn plain(path: &str) -> &str {
    let mut path = path;
    loop {
        let trimmed = path
            .trim_start_matches("./")
            .trim_start_matches('/')
            .trim_end_matches('/');
        if trimmed == path {
            return path;
        }
        path = trimmed;
    }
}

/// Whether `path` is one of `includes` or lies under one (every path when there are none).
fn wanted(path: &str, includes: &[String]) -> bool {
    let path = plain(path);
    includes.is_empty()
        || includes.iter().any(|inc| {
            let inc = plain(inc);
            inc.is_empty() || path == inc || path.starts_with(&format!("{inc}/"))
        })
}

/// The files that wanted hard links in `tar` point to.
async fn link_targets(
    tar: impl AsyncRead + Send + Unpin,
    includes: &[String],
) -> Result<Vec<String>> {
    let mut archive = tokio_tar::Archive::new(tar);
    let mut entries = archive.entries()?;
    let mut targets = Vec::new();
    while let Some(entry) = entries.next().await {
        let entry = entry?;
        if entry.header().entry_type() == tokio_tar::EntryType::Link
            && wanted(&entry.path()?.to_string_lossy(), includes)
            && let Some(target) = entry.link_name()?
        {
            let target = target.to_string_lossy().into_owned();
            if !wanted(&target, includes) {
                targets.push(target);
            }
        }
    }
    Ok(targets)
}

/// Unpacks the wanted entries of `tar` into `dst`. As root, files keep their owner; modes,
/// mtimes, symlinks and hard links are kept; device nodes are left out and setuid/setgid bits
/// dropped (a host directory). Directories get their metadata last, deepest first.
async fn unpack(
    tar: impl AsyncRead + Send + Unpin,
    dst: &Path,
    includes: &[String],
) -> Result<(u64, u64)> {
    use std::os::unix::fs::PermissionsExt;
    use tokio_tar::EntryType;
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut archive = tokio_tar::Archive::new(tar);
    let mut entries = archive.entries()?;
    let (mut count, mut devices) = (0u64, 0u64);
    let mut directories: Vec<(PathBuf, u32, u64, u64, u64)> = Vec::new();
    while let Some(entry) = entries.next().await {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        if !wanted(&path, includes) {
            continue;
        }
        let header = entry.header().clone();
        let kind = header.entry_type();
        if matches!(kind, EntryType::Char | EntryType::Block) {
            devices += 1;
            continue;
        }
        if kind == EntryType::Link
            && let Some(target) = entry.link_name()?
            && !wanted(&target.to_string_lossy(), includes)
        {
            return Err(anyhow!(
                "{path} is a hard link to {}, which --include leaves out: include both",
                target.display()
            ));
        }
        let (mode, uid, gid, mtime) = (
            header.mode()? & 0o1777,
            header.uid()?,
            header.gid()?,
            header.mtime()?,
        );
        if kind == EntryType::Directory {
            let at = safe_dir(dst, Path::new(plain(&path)))?;
            directories.push((at, mode, uid, gid, mtime));
            count += 1;
            continue;
        }
        if kind == EntryType::Fifo {
            let rel = Path::new(plain(&path));
            let parent = safe_dir(dst, rel.parent().unwrap_or(Path::new("")))?;
            let at = parent.join(rel.file_name().ok_or_else(|| anyhow!("{path}: no name"))?);
            make_fifo(&at, mode, mtime)?;
            if as_root {
                std::os::unix::fs::lchown(&at, Some(uid as u32), Some(gid as u32))?;
            }
            count += 1;
            continue;
        }
        // The library would set the entry's whole mode, setuid included: it writes with
        // the default mode, and the mode without setuid/setgid is set here.
        entry.set_preserve_permissions(false);
        entry.set_preserve_mtime(true);
        let Some(written) = entry.unpack_in(dst).await? else {
            continue;
        };
        count += 1;
        if as_root {
            std::os::unix::fs::lchown(&written, Some(uid as u32), Some(gid as u32))?;
        }
        if kind == EntryType::Regular {
            std::fs::set_permissions(&written, std::fs::Permissions::from_mode(mode))?;
        }
    }
    directories.sort_by_key(|d| std::cmp::Reverse(d.0.components().count()));
    for (at, mode, uid, gid, mtime) in directories {
        if as_root {
            std::os::unix::fs::lchown(&at, Some(uid as u32), Some(gid as u32))?;
        }
        // The time first: a mode without read permission would stop the open.
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
        std::fs::File::open(&at)?.set_modified(when)?;
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(mode))?;
    }
    Ok((count, devices))
}

/// `dst/rel` as a directory, made (mode 700 until its own metadata is applied) where missing;
/// refuses a path that leaves `dst` or goes through anything but a real directory (a symlink
/// an earlier entry made must not lead out of `dst`).
fn safe_dir(dst: &Path, rel: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let mut at = dst.to_path_buf();
    for part in rel.components() {
        match part {
            std::path::Component::Normal(name) => at.push(name),
            std::path::Component::CurDir => continue,
            _ => return Err(anyhow!("{} leaves the target directory", rel.display())),
        }
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(anyhow!(
                    "{} is not a directory (a symlink or a file) in the path of {}",
                    at.display(),
                    rel.display()
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new().mode(0o700).create(&at)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(at)
}

/// A named pipe with its mode and mtime.
fn make_fifo(at: &Path, mode: u32, mtime: u64) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(at.as_os_str().as_bytes())?;
    if unsafe { libc::mkfifo(path.as_ptr(), (mode & 0o777) as libc::mode_t) } != 0 {
        return Err(anyhow!(
            "cannot make the named pipe {}: {}",
            at.display(),
            std::io::Error::last_os_error()
        ));
    }
    std::fs::set_permissions(
        at,
        std::os::unix::fs::PermissionsExt::from_mode(mode & 0o777),
    )?;
    let time = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [time, time];
    if unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return Err(anyhow!(
            "cannot set the time of {}: {}",
            at.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Writes one volume to `out`: the whole tar; or with `path`, the file at that path as is,
/// or the tree under it as a tar. Fails, having written nothing, when nothing is at `path`
/// — unless that is only found after other output began (a tree's entries are streamed).
pub async fn dump<W>(tar: impl AsyncRead + Send + Unpin, path: Option<&str>, out: W) -> Result<()>
where
    W: AsyncWrite + Send + Unpin + 'static,
{
    use tokio_tar::EntryType;
    let mut out = out;
    let Some(path) = path else {
        let mut tar = tar;
        tokio::io::copy(&mut tar, &mut out).await?;
        out.flush().await?;
        return Ok(());
    };
    let wanted_path = [path.to_string()];
    let mut archive = tokio_tar::Archive::new(tar);
    let mut entries = archive.entries()?;
    let mut raw = Some(out);
    let mut builder: Option<tokio_tar::Builder<W>> = None;
    while let Some(entry) = entries.next().await {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        if !wanted(&name, &wanted_path) {
            continue;
        }
        let mut header = entry.header().clone();
        if let Some(out) = raw.as_mut()
            && plain(&name) == plain(path)
            && header.entry_type() == EntryType::Regular
        {
            tokio::io::copy(&mut entry, out).await?;
            out.flush().await?;
            return Ok(());
        }
        if builder.is_none() {
            let out = raw.take().expect("the output is ours until a tar begins");
            builder = Some(tokio_tar::Builder::new(out));
        }
        let tar_out = builder.as_mut().expect("just made");
        match header.entry_type() {
            EntryType::Symlink | EntryType::Link => {
                let link = entry.link_name()?.map(|l| l.into_owned());
                if let Some(link) = link {
                    header.set_link_name(&link).map_err(|e| {
                        anyhow!("{name}: its link target is too long to write again ({e}); dump the whole volume instead")
                    })?;
                }
                header.set_size(0);
                tar_out
                    .append_data(&mut header, plain(&name), tokio::io::empty())
                    .await?;
            }
            _ => {
                // The size a PAX record gives (files of 8 GiB and more), not the header's 0:
                // a header that understated it would let the file's bytes pass for entries.
                header.set_size(entry.effective_size());
                tar_out
                    .append_data(&mut header, plain(&name), &mut entry)
                    .await?
            }
        }
    }
    match builder {
        Some(tar_out) => {
            let mut out = tar_out.into_inner().await?;
            out.flush().await?;
            Ok(())
        }
        None => Err(crate::error::usage(format!(
            "nothing at '{}' in this volume; `lifeboat dump --volume NAME | tar -t` lists what is there",
            crate::text::printable(path)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_new_or_empty_real_directories_no_one_else_can_write() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        fresh_target(base, &base.join("new")).unwrap();
        fresh_target(base, &base.join("new")).unwrap();
        std::fs::write(base.join("new/file"), b"x").unwrap();
        let err = fresh_target(base, &base.join("new"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not empty"), "{err}");
        std::os::unix::fs::symlink("/etc", base.join("link")).unwrap();
        let err = fresh_target(base, &base.join("link"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a directory"), "{err}");
        std::fs::create_dir(base.join("open")).unwrap();
        std::fs::set_permissions(base.join("open"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        let err = fresh_target(base, &base.join("open"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("others can write"), "{err}");
        std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = fresh_target(base, &base.join("other"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("others can write"), "{err}");
    }

    #[test]
    fn includes_match_paths_and_what_lies_under_them() {
        let inc = vec!["/etc/app".to_string()];
        assert!(wanted("./etc/app", &inc));
        assert!(wanted("etc/app/config.yml", &inc));
        assert!(!wanted("etc/apple", &inc));
        assert!(!wanted("./", &inc));
        assert!(wanted("anything", &[]));
        assert_eq!(plain("./a/b/"), "a/b");
        assert_eq!(plain("./"), "");
    }
}
