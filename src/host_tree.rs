//! A volume's tree read straight from its directory on the Docker host, as the tar stream
//! Docker's archive API gives of it: `./` first, then every entry depth-first in name order;
//! modes with their type bits, numeric owners, mtimes in whole seconds; a file linked more than
//! once stored once and linked to its first name; `security.capability` as a PAX xattr;
//! sockets left out, as Docker leaves them out.
//!
//! Why: dockerd's archive API reads a cold volume at about half the disk's speed (1149 MiB: 3.4
//! s, against 1.5–1.7 s for `tar | cat` of its directory on the same machine), and it takes a
//! core of its own for the tar and the HTTP stream. Here files are read in 1 MiB pieces on a
//! blocking thread, into a bounded queue (16 pieces).
//!
//! Only for a directory both views agree on: `backup` uses it for a local volume without
//! driver options, on an engine reached through this host's socket, whose root directory has
//! the same mode, owner and mtime here as in the first header of Docker's own archive. It never
//! follows a symlink: entries are listed with `lstat`, each file is opened with `O_NOFOLLOW` and
//! must be the inode listed. A file whose size changes while it is read fails the read, as it
//! fails Docker's.
//!
//! Where it sits: an adapter beside `docker::archive`, which it stands in for; sees no other
//! module of lifeboat.

use bytes::{Bytes, BytesMut};
use futures::Stream;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use tokio_tar::{EntryType, Header};

/// The pieces the stream yields.
const PIECE: usize = 1 << 20;
/// Pieces read ahead of the consumer: the memory bound of the read.
const AHEAD: usize = 16;
const BLOCK: usize = 512;
/// Longest name or link target a ustar header holds; longer ones go in a GNU long-name record.
const NAME_FIELD: usize = 100;
const CAPABILITY: &str = "security.capability";

/// The tar stream of the tree under `root`, read on a blocking thread. The stream ends with an
/// error naming the entry when one cannot be read; dropping it stops the thread.
pub fn tar_of(root: PathBuf) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut out = Out {
            tx,
            buf: BytesMut::with_capacity(PIECE),
        };
        let mut walk = Walk {
            root: &root,
            first_names: HashMap::new(),
        };
        match walk.run(&mut out).and_then(|()| out.flush()) {
            Ok(()) | Err(Stop::Closed) => {}
            Err(Stop::Failed(error)) => {
                let _ = out.tx.blocking_send(Err(error));
            }
        }
    });
    let mut rx = rx;
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Why the walk ends early: the reader went away, or an entry could not be read.
enum Stop {
    Closed,
    Failed(io::Error),
}

impl From<io::Error> for Stop {
    fn from(error: io::Error) -> Self {
        Stop::Failed(error)
    }
}

/// Fails naming the entry, relative to the volume's root.
fn at(name: &[u8], error: io::Error) -> Stop {
    let name = String::from_utf8_lossy(name);
    Stop::Failed(io::Error::new(error.kind(), format!("{name}: {error}")))
}

fn changed(name: &[u8], how: &str) -> Stop {
    at(
        name,
        io::Error::other(format!(
            "{how} while the volume was read; is something other than the stopped app writing to it?"
        )),
    )
}

/// The stream's write side: bytes gathered into pieces of [`PIECE`].
struct Out {
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    buf: BytesMut,
}

impl Out {
    fn put(&mut self, mut bytes: &[u8]) -> Result<(), Stop> {
        while !bytes.is_empty() {
            let n = (PIECE - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.buf.len() == PIECE {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn pad(&mut self, len: u64) -> Result<(), Stop> {
        let pad = (BLOCK - (len % BLOCK as u64) as usize) % BLOCK;
        self.put(&[0; BLOCK][..pad])
    }

    fn flush(&mut self) -> Result<(), Stop> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, BytesMut::with_capacity(PIECE)).freeze();
        self.tx.blocking_send(Ok(piece)).map_err(|_| Stop::Closed)
    }

    /// Exactly `len` bytes of `file`, read into the pieces themselves, then the padding; fails
    /// when the file is shorter or longer than that.
    fn copy(&mut self, file: &mut File, len: u64, name: &[u8]) -> Result<(), Stop> {
        let mut left = len;
        while left > 0 {
            let start = self.buf.len();
            let want = (PIECE - start).min(usize::try_from(left).unwrap_or(usize::MAX));
            self.buf.resize(start + want, 0);
            let n = loop {
                match file.read(&mut self.buf[start..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other.map_err(|e| at(name, e))?,
                }
            };
            self.buf.truncate(start + n);
            if n == 0 {
                return Err(changed(name, "it became shorter"));
            }
            left -= n as u64;
            if self.buf.len() == PIECE {
                self.flush()?;
            }
        }
        if file.read(&mut [0; 1]).map_err(|e| at(name, e))? != 0 {
            return Err(changed(name, "it grew"));
        }
        self.pad(len)
    }
}

/// The walk of one tree: the first archive name of each inode linked more than once.
struct Walk<'a> {
    root: &'a Path,
    first_names: HashMap<(u64, u64), Vec<u8>>,
}

/// What one header says besides its name and the entry's metadata.
#[derive(Default)]
struct Extra<'a> {
    kind: Option<EntryType>,
    size: u64,
    link: Option<&'a [u8]>,
    capability: Option<Vec<u8>>,
}

impl Walk<'_> {
    fn run(&mut self, out: &mut Out) -> Result<(), Stop> {
        let meta = std::fs::symlink_metadata(self.root).map_err(|e| at(b"./", e))?;
        if !meta.is_dir() {
            return Err(at(b"./", io::Error::other("not a directory")));
        }
        self.header(out, b"./", &meta, Extra::default())?;
        let mut stack = vec![(
            self.root.to_path_buf(),
            b"./".to_vec(),
            names(self.root, b"./")?,
        )];
        while let Some((dir, prefix, left)) = stack.last_mut() {
            let Some(name) = left.pop() else {
                stack.pop();
                continue;
            };
            let path = dir.join(&name);
            let mut archived = prefix.clone();
            archived.extend_from_slice(name.as_bytes());
            let meta = std::fs::symlink_metadata(&path).map_err(|e| at(&archived, e))?;
            if meta.is_dir() {
                archived.push(b'/');
                self.header(out, &archived, &meta, Extra::default())?;
                let children = names(&path, &archived)?;
                stack.push((path, archived, children));
            } else {
                self.entry(out, &path, &archived, &meta)?;
            }
        }
        // The end of the archive: two zero blocks.
        out.put(&[0; 2 * BLOCK])
    }

    /// A non-directory entry, and a regular file's data.
    fn entry(
        &mut self,
        out: &mut Out,
        path: &Path,
        archived: &[u8],
        meta: &Metadata,
    ) -> Result<(), Stop> {
        let kind = meta.file_type();
        if kind.is_file() {
            if meta.nlink() > 1 {
                let inode = (meta.dev(), meta.ino());
                if let Some(first) = self.first_names.get(&inode) {
                    let extra = Extra {
                        kind: Some(EntryType::Link),
                        link: Some(first),
                        ..Extra::default()
                    };
                    return self.header(out, archived, meta, extra);
                }
                self.first_names.insert(inode, archived.to_vec());
            }
            return self.file(out, path, archived, meta);
        }
        if kind.is_symlink() {
            let target = std::fs::read_link(path).map_err(|e| at(archived, e))?;
            let extra = Extra {
                link: Some(target.as_os_str().as_bytes()),
                ..Extra::default()
            };
            return self.header(out, archived, meta, extra);
        }
        if kind.is_socket() {
            tracing::debug!(entry = %String::from_utf8_lossy(archived), "left out: a socket");
            return Ok(());
        }
        // Devices and FIFOs: the header says all.
        self.header(out, archived, meta, Extra::default())
    }

    fn file(
        &mut self,
        out: &mut Out,
        path: &Path,
        archived: &[u8],
        listed: &Metadata,
    ) -> Result<(), Stop> {
        // O_NONBLOCK: a FIFO put in the file's place does not block the open.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| at(archived, e))?;
        let meta = file.metadata().map_err(|e| at(archived, e))?;
        if !meta.is_file() || (meta.dev(), meta.ino()) != (listed.dev(), listed.ino()) {
            return Err(changed(archived, "it was replaced"));
        }
        let extra = Extra {
            size: meta.len(),
            capability: capability(&file).map_err(|e| at(archived, e))?,
            ..Extra::default()
        };
        self.header(out, archived, &meta, extra)?;
        out.copy(&mut file, meta.len(), archived)
    }

    /// The entry's header, after the records it needs: a GNU long name, a GNU long link, a PAX
    /// header with its capability (in that order, which the restore's tar policy requires).
    fn header(
        &self,
        out: &mut Out,
        archived: &[u8],
        meta: &Metadata,
        extra: Extra<'_>,
    ) -> Result<(), Stop> {
        if archived.len() > NAME_FIELD {
            long_record(out, EntryType::GNULongName, archived)?;
        }
        let link = extra.link.unwrap_or_default();
        if link.len() > NAME_FIELD {
            long_record(out, EntryType::GNULongLink, link)?;
        }
        if let Some(value) = &extra.capability {
            let record = pax_record(&format!("SCHILY.xattr.{CAPABILITY}"), value);
            let mut header = meta_header(b"././@PaxHeader", EntryType::XHeader, record.len());
            header.set_cksum();
            out.put(header.as_bytes())?;
            out.put(&record)?;
            out.pad(record.len() as u64)?;
        }
        let kind = extra.kind.unwrap_or_else(|| entry_type(meta));
        let mut header = Header::new_ustar();
        put_field(&mut header.as_old_mut().name, archived);
        put_field(&mut header.as_old_mut().linkname, link);
        header.set_mode(meta.mode());
        header.set_uid(meta.uid().into());
        header.set_gid(meta.gid().into());
        // Before 1970 (a negative mtime) is recorded as 1970, as ustar cannot say it.
        header.set_mtime(meta.mtime().max(0).unsigned_abs());
        header.set_size(extra.size);
        header.set_entry_type(kind);
        if kind.is_character_special() || kind.is_block_special() {
            let device = meta.rdev();
            header.set_device_major(libc::major(device))?;
            header.set_device_minor(libc::minor(device))?;
        }
        header.set_cksum();
        out.put(header.as_bytes())
    }
}

/// The names in a directory (`archived` in the tar), in reverse byte order: the walk pops the
/// first.
fn names(dir: &Path, archived: &[u8]) -> Result<Vec<OsString>, Stop> {
    let mut names = std::fs::read_dir(dir)
        .and_then(|entries| {
            entries
                .map(|entry| entry.map(|e| e.file_name()))
                .collect::<io::Result<Vec<_>>>()
        })
        .map_err(|e| at(archived, e))?;
    names.sort_unstable_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
    Ok(names)
}

fn entry_type(meta: &Metadata) -> EntryType {
    let kind = meta.file_type();
    if kind.is_dir() {
        EntryType::Directory
    } else if kind.is_symlink() {
        EntryType::Symlink
    } else if kind.is_char_device() {
        EntryType::Char
    } else if kind.is_block_device() {
        EntryType::Block
    } else if kind.is_fifo() {
        EntryType::Fifo
    } else {
        EntryType::Regular
    }
}

/// The first bytes of `value` in a NUL-padded header field (a longer value is in a record
/// before the header).
fn put_field(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// The header of a metadata record (long name, long link, PAX) of `size` bytes.
fn meta_header(name: &[u8], kind: EntryType, size: usize) -> Header {
    let mut header = if kind == EntryType::XHeader {
        Header::new_ustar()
    } else {
        Header::new_gnu()
    };
    put_field(&mut header.as_old_mut().name, name);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(size as u64);
    header.set_entry_type(kind);
    header
}

/// A GNU long-name or long-link record: `value` and a NUL, padded.
fn long_record(out: &mut Out, kind: EntryType, value: &[u8]) -> Result<(), Stop> {
    let mut header = meta_header(b"././@LongLink", kind, value.len() + 1);
    header.set_cksum();
    out.put(header.as_bytes())?;
    out.put(value)?;
    out.put(&[0])?;
    out.pad(value.len() as u64 + 1)
}

/// One PAX record, `"<length> <key>=<value>\n"`, its length counting its own digits.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

/// The file's `security.capability` xattr, if it has one.
fn capability(file: &File) -> io::Result<Option<Vec<u8>>> {
    let name = std::ffi::CString::new(CAPABILITY).expect("no NUL");
    let mut value = vec![0u8; 256];
    // SAFETY: the name is NUL-terminated and the buffer is `value.len()` bytes long.
    let n = unsafe {
        libc::fgetxattr(
            file.as_raw_fd(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    if n < 0 {
        let error = io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::ENODATA | libc::ENOTSUP) => Ok(None),
            _ => Err(error),
        };
    }
    value.truncate(n as usize);
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use std::os::unix::fs::symlink;
    use tokio::io::AsyncReadExt;

    async fn tar_bytes(root: &Path) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        tokio_util::io::StreamReader::new(tar_of(root.to_path_buf()))
            .read_to_end(&mut out)
            .await?;
        Ok(out)
    }

    /// Each entry's name, type, size, link target and data, as tokio-tar reads them.
    async fn entries(tar: &[u8]) -> Vec<(String, EntryType, u64, String, Vec<u8>)> {
        let mut archive = tokio_tar::Archive::new(tar);
        let mut entries = archive.entries().unwrap();
        let mut seen = Vec::new();
        while let Some(mut entry) = entries.try_next().await.unwrap() {
            let header = entry.header().clone();
            let name = String::from_utf8_lossy(&entry.path_bytes().unwrap()).into_owned();
            let link = entry
                .link_name_bytes()
                .unwrap()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).await.unwrap();
            let size = data.len() as u64;
            seen.push((name, header.entry_type(), size, link, data));
        }
        seen
    }

    #[tokio::test]
    async fn a_tree_reads_as_docker_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("b/deep")).unwrap();
        std::fs::write(root.join("a.txt"), b"hello").unwrap();
        std::fs::write(root.join("b/deep/big"), vec![7u8; 3 * PIECE + 5]).unwrap();
        std::fs::hard_link(root.join("a.txt"), root.join("c-link")).unwrap();
        symlink("/etc/passwd", root.join("d-abs")).unwrap();
        let long = "n".repeat(150);
        std::fs::write(root.join(&long), b"long").unwrap();
        symlink("t".repeat(200), root.join("e-long-target")).unwrap();
        let tar = tar_bytes(root).await.unwrap();
        assert_eq!(tar.len() % BLOCK, 0);
        assert!(tar.ends_with(&[0; 1024]));
        let seen = entries(&tar).await;
        let names: Vec<&str> = seen.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "./",
                "./a.txt",
                "./b/",
                "./b/deep/",
                "./b/deep/big",
                "./c-link",
                "./d-abs",
                "./e-long-target",
                &format!("./{long}"),
            ]
        );
        let by_name = |n: &str| seen.iter().find(|e| e.0 == n).unwrap();
        assert_eq!(by_name("./a.txt").4, b"hello");
        assert_eq!(by_name("./b/deep/big").2, 3 * PIECE as u64 + 5);
        assert_eq!(by_name("./b/deep/big").4, vec![7u8; 3 * PIECE + 5]);
        assert_eq!(by_name("./c-link").1, EntryType::Link);
        assert_eq!(by_name("./c-link").3, "./a.txt");
        assert_eq!(by_name("./d-abs").3, "/etc/passwd");
        assert_eq!(by_name("./e-long-target").3, "t".repeat(200));
        assert_eq!(by_name(&format!("./{long}")).4, b"long");
        // The root's header is what the backup records as the volume root.
        let root_meta = crate::pipeline::tar_check::root_meta(&tar[..512]).unwrap();
        let meta = std::fs::metadata(root).unwrap();
        assert_eq!(root_meta.mode, meta.mode());
        assert_eq!(root_meta.mtime, meta.mtime() as u64);
    }

    #[tokio::test]
    async fn the_restore_policy_accepts_what_it_writes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join(format!("{}/x", "d".repeat(120)))).unwrap();
        std::fs::write(root.join("f"), b"data").unwrap();
        std::fs::hard_link(root.join("f"), root.join("g")).unwrap();
        symlink("f", root.join("s")).unwrap();
        let tar = tar_bytes(root).await.unwrap();
        let summary = crate::pipeline::tar_check::check_archive(
            &tar[..],
            crate::pipeline::tar_check::EntryRules::default(),
        )
        .await
        .unwrap();
        assert_eq!(summary.entries, 6);
    }

    #[tokio::test]
    async fn a_file_that_changes_size_while_read_fails_the_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![1u8; 100]).unwrap();
        let file = File::open(dir.path().join("f")).unwrap();
        let (tx, _rx) = tokio::sync::mpsc::channel(AHEAD);
        let mut out = Out {
            tx,
            buf: BytesMut::new(),
        };
        let shorter = out.copy(&mut file.try_clone().unwrap(), 200, b"./f");
        let Err(Stop::Failed(error)) = shorter else {
            panic!("a shorter file must fail the read")
        };
        assert!(
            error.to_string().contains("./f: it became shorter"),
            "{error}"
        );
        let mut file = File::open(dir.path().join("f")).unwrap();
        let Err(Stop::Failed(error)) = out.copy(&mut file, 50, b"./f") else {
            panic!("a longer file must fail the read")
        };
        assert!(error.to_string().contains("it grew"), "{error}");
    }

    #[test]
    fn a_pax_record_counts_its_own_length() {
        assert_eq!(pax_record("k", b"v"), b"6 k=v\n");
        let record = pax_record("SCHILY.xattr.security.capability", &[1; 20]);
        let len: usize = String::from_utf8_lossy(&record[..2]).parse().unwrap();
        assert_eq!(len, record.len());
    }
}
