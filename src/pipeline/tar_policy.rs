//! The restore-side tar entry policy, as a pass-through reader: [`PolicyReader`] yields the
//! bytes of a tar stream unchanged, follows its headers itself, and fails the read as soon as an
//! entry breaks the policy — so it can sit on the stream going into Docker.
//!
//! Docker extracts with Go's archive/tar; tokio-tar (the second opinion in
//! [`super::tar_check::check_archive`]) is another parser. Whatever two tar readers read
//! differently is a hole: the check would validate one tree and Docker write another. So this
//! reader accepts only what both read alike, and refuses the rest:
//!
//! - headers: a correct (unsigned) checksum; ustar (`ustar\0` `00`, no star trailer) or GNU
//!   magic; every numeric field Go parses in plain octal or GNU base-256 that both read as the
//!   same non-negative value; ids that fit a Linux uid.
//! - entry types: regular (`0`, NUL), hardlink, symlink, char and block devices, directory,
//!   FIFO, plus the metadata types `x` (PAX) and `L`/`K` (GNU long name and link). Refused:
//!   global PAX headers `g` (Go returns them as entries, Docker skips them, others apply them
//!   to what follows), sparse files `S` (Go reads their map from extra blocks), contiguous
//!   files `7` (Docker refuses them: "unhandled tar header type") and anything else.
//! - types that carry no data in Go (links, devices, directories, FIFOs) must say size 0: Go
//!   skips no data for them whatever the size field says, tokio-tar skips the size given.
//! - PAX records: only keys on [`PAX_KEYS`] / [`PAX_KEY_PREFIXES`], each once, non-empty, with
//!   no NUL (except in xattr values, which are binary; Docker writes `security.capability`);
//!   numbers and times in a form both readers parse. `GNU.sparse.*` is refused: Go renames
//!   such an entry to `GNU.sparse.name` and sizes it from `realsize`.
//! - PAX size only where the ustar field cannot hold it (see [`size_disagreement`]).
//! - at most one PAX header, one long name and one long link before an entry, the PAX header
//!   last; never a long name and a PAX `path` (or a long link and a PAX `linkpath`) for the
//!   same entry: Go lets the GNU record win, tokio-tar the PAX one. Metadata must be followed
//!   by an entry.
//! - the tree ([`EntryPolicy`]): see there.
//! - into a bind mount ([`TargetKind::Bind`]): no device nodes, no setuid or setgid bits, no
//!   file capabilities (`SCHILY.xattr.security.capability`, setuid by another name).
//! - the end: the end-of-archive marker (two zero blocks) at a header position, only zeros
//!   after it, and at least one entry.
//!
//! Where it sits: Inside `pipeline`, under `tar_check`: pure rules over tar headers.

use super::tar_walk::{self, BLOCK, Body, Format, Visit, Walker};
use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsStr;
use std::io;
use std::ops::Bound;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_tar::EntryType;

/// What the archive will be extracted into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetKind {
    /// A Docker volume: device nodes and setuid files are restored as the backup recorded them.
    #[default]
    Volume,
    /// A host directory bind-mounted into the app: no device nodes, no setuid/setgid, no file
    /// capabilities.
    Bind,
}

/// The rules that depend on where the archive goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct EntryRules {
    pub target: TargetKind,
}

/// PAX keys both readers handle alike (Go 1.19's `mergePAX`, tokio-tar 0.7): `path`,
/// `linkpath` and `size` define the entry and both apply them; `uid`, `gid`, `uname`, `gname`
/// and the times are metadata Go parses (a malformed value fails Docker's extraction, so their
/// form is checked); `comment`, `charset` and `hdrcharset` are ignored by both.
pub const PAX_KEYS: &[&str] = &[
    "path",
    "linkpath",
    "size",
    "uid",
    "gid",
    "uname",
    "gname",
    "mtime",
    "atime",
    "ctime",
    "comment",
    "charset",
    "hdrcharset",
];

/// PAX key prefixes accepted: extended attributes as Go reads them into `Header.Xattrs` and
/// Docker sets them. `LIBARCHIVE.xattr.` is not here: Go (and so Docker) ignores it, so the
/// attribute would be silently lost.
pub const PAX_KEY_PREFIXES: &[&str] = &["SCHILY.xattr."];

/// Metadata headers (PAX, GNU long names) larger than this are refused: Go's archive/tar
/// refuses them too, and the reader holds one in memory.
const MAX_META: u64 = 1 << 20;

/// The largest uid or gid restored: Linux ids are 32 bits and `u32::MAX` means "unchanged"
/// to chown; Go passes larger ones on truncated.
const MAX_ID: u64 = u32::MAX as u64 - 1;

/// An entry broke the policy, or the stream is not a tar both readers read alike.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PolicyViolation(pub String);

/// Sizes a PAX `size` record may legitimately override: only those the ustar field cannot hold
/// (8 GiB and more), and then the ustar field must be 0 or agree. Anything else is the parser
/// differential behind CVE-2025-62518: extractors that trust different fields see different
/// entries, so the one lifeboat validated would not be the one Docker writes.
pub(crate) fn size_disagreement(ustar_size: u64, effective_size: u64) -> Option<String> {
    const USTAR_MAX: u64 = (1 << 33) - 1;
    let agrees = ustar_size == effective_size || (effective_size > USTAR_MAX && ustar_size == 0);
    (!agrees).then(|| {
        format!("its PAX size ({effective_size}) disagrees with its ustar size ({ustar_size})")
    })
}

/// The path relative to the volume root, or why it is not acceptable.
pub(crate) fn normalize(path: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("contains '..'".into()),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path".into()),
        }
    }
    Ok(out)
}

/// What the archive put at a path, as far as later entries care. Directories are not kept:
/// a path that is not here is a directory or nothing, and Docker creates missing parents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    File,
    Symlink,
    Special,
}

/// The tree policy, fed one entry at a time in archive order, following what Docker does with
/// each (an entry replaces whatever was at its path, with its subtree, unless both are
/// directories): only normal path components (a leading `./` is fine, it is how Docker writes
/// the volume root); no absolute paths and no `..`; nothing below a symlink the archive created
/// (it would write through the link) or below any other non-directory (Docker fails there);
/// the root must be a directory; hardlinks only to non-directories (files, symlinks, devices,
/// FIFOs: `link(2)` does not follow a symlink, and the link is what its target is) the archive created earlier and that
/// are still there; symlink targets may point anywhere absolute, but a relative target may not
/// climb above the extraction root (Docker refuses it as a breakout); device nodes and FIFOs
/// only into volumes; any other entry type is refused.
#[derive(Debug, Default)]
pub struct EntryPolicy {
    rules: EntryRules,
    nodes: BTreeMap<PathBuf, Node>,
}

impl EntryPolicy {
    pub fn new(rules: EntryRules) -> Self {
        Self {
            rules,
            nodes: BTreeMap::new(),
        }
    }

    /// Checks one entry; `Err` carries the reason.
    pub fn check(
        &mut self,
        path: &Path,
        kind: EntryType,
        link: Option<&Path>,
    ) -> Result<(), String> {
        let normalized = normalize(path)?;
        for ancestor in normalized.ancestors().skip(1) {
            match self.nodes.get(ancestor) {
                Some(Node::Symlink) => {
                    return Err(format!(
                        "is below {}, a symlink the archive created: extraction would write through it",
                        ancestor.display()
                    ));
                }
                Some(_) => {
                    return Err(format!(
                        "is below {}, which the archive created as a non-directory",
                        ancestor.display()
                    ));
                }
                None => {}
            }
        }
        if normalized.as_os_str().is_empty() {
            return if kind == EntryType::Directory {
                Ok(())
            } else {
                Err("replaces the volume root with a non-directory".into())
            };
        }
        let node = match kind {
            EntryType::Directory => {
                self.nodes.remove(&normalized);
                return Ok(());
            }
            // What it links to, checked below.
            EntryType::Regular | EntryType::Link => Node::File,
            EntryType::Symlink => {
                let target = link
                    .filter(|l| !l.as_os_str().is_empty())
                    .ok_or("is a symlink without a target")?;
                if climbs_out(&normalized, target) {
                    return Err(format!(
                        "is a symlink to {}, which leads out of the directory it is restored into (Docker refuses it)",
                        target.display()
                    ));
                }
                Node::Symlink
            }
            EntryType::Char | EntryType::Block if self.rules.target == TargetKind::Bind => {
                return Err(
                    "is a device node, which lifeboat does not restore into a bind mount".into(),
                );
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => Node::Special,
            other => {
                return Err(format!(
                    "has an entry type lifeboat does not restore ({other:?})"
                ));
            }
        };
        // Docker removes what was at the path, subtree included, before creating the entry.
        self.remove_tree(&normalized);
        let node = if kind == EntryType::Link {
            let target = link
                .filter(|l| !l.as_os_str().is_empty())
                .ok_or("is a hardlink without a target")?;
            let target =
                normalize(target).map_err(|e| format!("is a hardlink whose target {e}"))?;
            // A link to a symlink is a symlink: nothing may be written below it either.
            *self.nodes.get(&target).ok_or_else(|| {
                format!(
                    "is a hardlink to {}, which is not an earlier file of this archive",
                    target.display()
                )
            })?
        } else {
            node
        };
        self.nodes.insert(normalized, node);
        Ok(())
    }

    fn remove_tree(&mut self, path: &Path) {
        self.nodes.remove(path);
        let below: Vec<PathBuf> = self
            .nodes
            .range::<Path, _>((Bound::Excluded(path), Bound::Unbounded))
            .map(|(p, _)| p)
            .take_while(|p| p.starts_with(path))
            .cloned()
            .collect();
        for p in below {
            self.nodes.remove(&p);
        }
    }
}

/// Whether a symlink at `link` (normalized) pointing to `target` leads above the extraction
/// root, as Docker decides it: the target joined to the link's directory, lexically (an
/// absolute target is joined too).
fn climbs_out(link: &Path, target: &Path) -> bool {
    let mut depth = link.components().count() as i64 - 1;
    for component in target.components() {
        match component {
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            Component::Normal(_) => depth += 1,
            _ => {}
        }
    }
    false
}

/// An entry as the reader saw it, for comparing with a second parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SeenEntry {
    pub path: Vec<u8>,
    pub link: Option<Vec<u8>>,
    /// The type byte (NUL read as `0`).
    pub kind: u8,
    pub size: u64,
}

/// The records of a PAX header that matter after it was checked.
#[derive(Debug, Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    capability: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meta {
    Pax,
    LongName,
    LongLink,
}

/// The header-by-header checks, fed by the [`Walker`].
struct EntryCheck {
    rules: EntryRules,
    policy: EntryPolicy,
    pax: Option<Pax>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    collecting: Option<(Meta, u64)>,
    entries: u64,
    file_bytes: u64,
    log: Option<Vec<SeenEntry>>,
}

fn violation(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, PolicyViolation(message))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).escape_debug().to_string()
}

/// Types that have no data in Go's archive/tar whatever their size field says.
fn header_only(kind: u8) -> bool {
    matches!(kind, b'1'..=b'6')
}

impl EntryCheck {
    fn new(rules: EntryRules) -> Self {
        Self {
            rules,
            policy: EntryPolicy::new(rules),
            pax: None,
            long_name: None,
            long_link: None,
            collecting: None,
            entries: 0,
            file_bytes: 0,
            log: None,
        }
    }

    fn has_meta(&self) -> bool {
        self.pax.is_some() || self.long_name.is_some() || self.long_link.is_some()
    }

    /// The header's own name: the ustar prefix joined to the name, as both readers do.
    fn header_name(block: &[u8; BLOCK], format: Format) -> Vec<u8> {
        let name = tar_walk::c_string(&block[0..100]);
        let prefix = tar_walk::c_string(&block[345..500]);
        if format == Format::Ustar && !prefix.is_empty() {
            [prefix, b"/", name].concat()
        } else {
            name.to_vec()
        }
    }

    /// The numeric fields Go parses (a failure fails Docker's extraction), read strictly.
    fn fields(block: &[u8; BLOCK], format: Format) -> Result<(u64, u64), String> {
        let mut fields: Vec<(&str, &[u8])> = vec![
            ("mode", &block[100..108]),
            ("uid", &block[108..116]),
            ("gid", &block[116..124]),
            ("size", &block[124..136]),
            ("mtime", &block[136..148]),
            ("devmajor", &block[329..337]),
            ("devminor", &block[337..345]),
        ];
        if format == Format::Gnu {
            // Go falls back to reading a ustar prefix when these do not parse.
            for (name, range) in [("atime", 345..357), ("ctime", 357..369)] {
                if block[range.start] != 0 {
                    fields.push((name, &block[range]));
                }
            }
        }
        let mut values = [0u64; 4];
        for (i, (name, field)) in fields.iter().enumerate() {
            let value = tar_walk::numeric(field).ok_or_else(|| {
                format!("its {name} field is not a number both tar readers read alike")
            })?;
            if (*name == "uid" || *name == "gid") && value > MAX_ID {
                return Err(format!("its {name} ({value}) is not a Linux id"));
            }
            if i < 4 {
                values[i] = value;
            }
        }
        Ok((values[0], values[3]))
    }

    fn meta_header(
        &mut self,
        block: &[u8; BLOCK],
        at: u64,
        kind: u8,
        size: u64,
    ) -> Result<Body, String> {
        let what = match kind {
            b'x' => "PAX header",
            b'L' => "GNU long name",
            _ => "GNU long link",
        };
        if self.pax.is_some() {
            return Err(format!(
                "a {what} follows a PAX header: a PAX header must come right before its entry (Go keeps only the last, other readers merge them)"
            ));
        }
        let meta = match kind {
            b'x' => {
                if tar_walk::format(block) != Ok(Format::Ustar) {
                    return Err("a PAX header is not in ustar format".into());
                }
                Meta::Pax
            }
            b'L' if self.long_name.is_some() => {
                return Err("two GNU long names in a row describe one entry".into());
            }
            b'K' if self.long_link.is_some() => {
                return Err("two GNU long links in a row describe one entry".into());
            }
            b'L' => Meta::LongName,
            _ => Meta::LongLink,
        };
        if size > MAX_META {
            return Err(format!("a {what} of {size} bytes (at most 1 MiB)"));
        }
        if meta != Meta::Pax && size == 0 {
            return Err(format!("an empty {what}"));
        }
        self.collecting = Some((meta, at));
        Ok(Body::Collect(size))
    }

    fn entry(&mut self, block: &[u8; BLOCK], format: Format) -> Result<Body, (Vec<u8>, String)> {
        let pax = self.pax.take().unwrap_or_default();
        let long_name = self.long_name.take();
        let long_link = self.long_link.take();
        let path = long_name
            .clone()
            .or_else(|| pax.path.clone())
            .unwrap_or_else(|| Self::header_name(block, format));
        let fail = |reason: String| (path.clone(), reason);
        if long_name.is_some() && pax.path.is_some() {
            return Err(fail(
                "has both a GNU long name and a PAX path (tar readers disagree on which wins)"
                    .into(),
            ));
        }
        if long_link.is_some() && pax.linkpath.is_some() {
            return Err(fail(
                "has both a GNU long link and a PAX linkpath (tar readers disagree on which wins)"
                    .into(),
            ));
        }
        let link = long_link
            .or(pax.linkpath)
            .or_else(|| Some(tar_walk::c_string(&block[157..257]).to_vec()))
            .filter(|l| !l.is_empty());
        let (mode, ustar_size) = Self::fields(block, format).map_err(fail)?;
        let size = pax.size.unwrap_or(ustar_size);
        if let Some(reason) = size_disagreement(ustar_size, size) {
            return Err(fail(reason));
        }
        let kind = match block[156] {
            0 => b'0',
            other => other,
        };
        if header_only(kind) && size != 0 {
            return Err(fail(format!(
                "is a {:?} entry with {size} bytes of data: Go's archive/tar reads none for this type, other readers do",
                EntryType::new(kind)
            )));
        }
        if kind == b'0' && path.ends_with(b"/") {
            return Err(fail(
                "is a regular file whose name ends in '/' (Go's archive/tar may make it a directory)"
                    .into(),
            ));
        }
        if self.rules.target == TargetKind::Bind {
            if mode & 0o6000 != 0 {
                return Err(fail(format!(
                    "has the setuid or setgid bit (mode {mode:o}), which lifeboat does not restore into a bind mount"
                )));
            }
            if pax.capability {
                return Err(fail(
                    "has file capabilities (security.capability), which lifeboat does not restore into a bind mount"
                        .into(),
                ));
            }
        }
        let os_path = Path::new(OsStr::from_bytes(&path));
        let os_link = link.as_deref().map(|l| Path::new(OsStr::from_bytes(l)));
        self.policy
            .check(os_path, EntryType::new(kind), os_link)
            .map_err(fail)?;
        self.entries += 1;
        if kind == b'0' {
            self.file_bytes += size;
        }
        if let Some(log) = &mut self.log {
            log.push(SeenEntry {
                path: path.clone(),
                link,
                kind,
                size,
            });
        }
        Ok(Body::Skip(size))
    }
}

/// Checks the records of a PAX header.
fn parse_pax(data: &[u8]) -> Result<Pax, String> {
    let mut pax = Pax::default();
    let mut keys: Vec<&[u8]> = Vec::new();
    for record in tar_walk::pax_records(data) {
        let (key, value) = record.map_err(String::from)?;
        let name = lossy(key);
        if keys.contains(&key) {
            return Err(format!("the PAX record {name} appears twice"));
        }
        keys.push(key);
        if value.is_empty() {
            return Err(format!(
                "the PAX record {name} is empty (Go then keeps the ustar field, other readers clear it)"
            ));
        }
        if let Some(attribute) = key.strip_prefix(b"SCHILY.xattr.") {
            if attribute.is_empty() || attribute.contains(&0) {
                return Err(format!("the PAX record {name} names no valid attribute"));
            }
            pax.capability |= attribute == b"security.capability";
            continue;
        }
        if key.starts_with(b"GNU.sparse.") {
            return Err(format!(
                "the PAX record {name} makes it a GNU sparse file (Go renames and resizes such entries, other readers do not)"
            ));
        }
        if value.contains(&0) {
            return Err(format!("the PAX record {name} has a NUL byte in its value"));
        }
        let number = |max: u64| -> Result<u64, String> {
            std::str::from_utf8(value)
                .ok()
                .filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("the PAX record {name} is not a number both readers accept"))
        };
        match key {
            b"path" => pax.path = Some(value.to_vec()),
            b"linkpath" => pax.linkpath = Some(value.to_vec()),
            b"size" => pax.size = Some(number(i64::MAX as u64)?),
            b"uid" | b"gid" => {
                number(MAX_ID)?;
            }
            b"mtime" | b"atime" | b"ctime" => {
                let text = value.strip_prefix(b"-").unwrap_or(value);
                let mut parts = text.splitn(2, |b| *b == b'.');
                let seconds = parts.next().unwrap_or_default();
                let fraction = parts.next();
                let digits = |d: &[u8]| !d.is_empty() && d.iter().all(u8::is_ascii_digit);
                if !digits(seconds) || seconds.len() > 18 || fraction.is_some_and(|f| !digits(f)) {
                    return Err(format!("the PAX record {name} is not a time Go parses"));
                }
            }
            b"uname" | b"gname" | b"comment" | b"charset" | b"hdrcharset" => {}
            _ => {
                return Err(format!(
                    "the PAX record {name} is not one lifeboat accepts (Docker never writes it; tar readers differ on what it means)"
                ));
            }
        }
    }
    Ok(pax)
}

/// The GNU long name or link in a `L`/`K` header's data: the name, then NULs only.
fn long_name(data: &[u8]) -> Result<Vec<u8>, String> {
    let name = tar_walk::c_string(data);
    if name.is_empty() {
        return Err("a GNU long name or link is empty".into());
    }
    if data[name.len()..].iter().any(|b| *b != 0) {
        return Err("a GNU long name or link has bytes after its NUL".into());
    }
    Ok(name.to_vec())
}

impl Visit for EntryCheck {
    fn header(&mut self, block: &[u8; BLOCK], at: u64) -> io::Result<Body> {
        let malformed = |reason: &str| {
            violation(format!(
                "malformed tar stream: the header at byte {at} ('{}'): {reason}",
                lossy(tar_walk::c_string(&block[..100]))
            ))
        };
        if !tar_walk::checksum_ok(block) {
            return Err(malformed(
                "its checksum is wrong (or it is not a tar header)",
            ));
        }
        let format = tar_walk::format(block).map_err(malformed)?;
        let kind = block[156];
        match kind {
            b'x' | b'L' | b'K' => {
                let (_, size) = Self::fields(block, format).map_err(|r| malformed(&r))?;
                self.meta_header(block, at, kind, size)
                    .map_err(|reason| malformed(&reason))
            }
            0 | b'0'..=b'6' => self.entry(block, format).map_err(|(path, reason)| {
                violation(format!("bad tar entry '{}': {reason}", lossy(&path)))
            }),
            _ => {
                let reason = match kind {
                    b'g' => "is a global PAX header (type 'g'): Docker never writes one, and tar readers apply it differently".to_string(),
                    b'S' => "is a GNU sparse file (type 'S'): Go reads its map from extra blocks, other readers differ".to_string(),
                    b'7' => "is a contiguous file (type '7'), which Docker refuses to extract".to_string(),
                    other => format!(
                        "has an entry type lifeboat does not restore ('{}')",
                        char::from(other).escape_default()
                    ),
                };
                Err(violation(format!(
                    "bad tar entry '{}': {reason}",
                    lossy(&Self::header_name(block, format))
                )))
            }
        }
    }

    fn payload(&mut self, data: &[u8]) -> io::Result<()> {
        let Some((meta, at)) = self.collecting.take() else {
            return Ok(());
        };
        let result = match meta {
            Meta::Pax => parse_pax(data).map(|pax| self.pax = Some(pax)),
            Meta::LongName => long_name(data).map(|name| self.long_name = Some(name)),
            Meta::LongLink => long_name(data).map(|name| self.long_link = Some(name)),
        };
        result.map_err(|reason| {
            violation(format!(
                "malformed tar stream: the metadata header at byte {at}: {reason}"
            ))
        })
    }

    fn end_marker(&mut self, at: u64) -> io::Result<()> {
        if self.has_meta() {
            return Err(violation(format!(
                "malformed tar stream: a PAX header or GNU long name is followed by the end-of-archive marker at byte {at}, not by an entry"
            )));
        }
        Ok(())
    }

    fn malformed(&self, message: String) -> io::Error {
        violation(format!("malformed tar stream: {message}"))
    }
}

#[derive(Default)]
struct Shared {
    entries: u64,
    file_bytes: u64,
    tar_bytes: u64,
    first_block: Vec<u8>,
    violation: Option<String>,
    /// Entries seen and not yet compared, when a second parser compares them.
    log: Option<VecDeque<SeenEntry>>,
}

/// What the caller keeps to read the totals once the reader reached the end of the stream.
#[derive(Clone, Default)]
pub struct PolicyHandle(Arc<Mutex<Shared>>);

impl PolicyHandle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Entries (files, directories, links, …; not metadata headers) seen so far.
    pub fn entries(&self) -> u64 {
        self.lock().entries
    }

    /// Bytes of regular-file content seen so far.
    pub fn file_bytes(&self) -> u64 {
        self.lock().file_bytes
    }

    /// Bytes of the tar stream passed through so far.
    pub fn tar_bytes(&self) -> u64 {
        self.lock().tar_bytes
    }

    /// The first 512 bytes of the stream (for [`super::tar_check::root_meta`]).
    pub fn first_block(&self) -> Vec<u8> {
        self.lock().first_block.clone()
    }

    /// Why the stream was refused, if it was.
    pub fn violation(&self) -> Option<String> {
        self.lock().violation.clone()
    }

    pub(crate) fn record_entries(&self) {
        self.lock().log = Some(VecDeque::new());
    }

    pub(crate) fn next_seen(&self) -> Option<SeenEntry> {
        self.lock().log.as_mut()?.pop_front()
    }
}

/// Passes a tar stream through unchanged, failing the read (an `InvalidData` I/O error
/// carrying a [`PolicyViolation`] that names the entry and the reason) as soon as an entry
/// breaks the policy, and at the end unless the archive ended properly and held an entry.
/// It holds at most one header block or one metadata header (≤ 1 MiB) at a time, plus the
/// tree policy's record of the non-directories the archive created.
pub struct PolicyReader<R> {
    inner: R,
    walker: Walker,
    check: EntryCheck,
    handle: PolicyHandle,
    failed: Option<(io::ErrorKind, String)>,
}

impl<R> PolicyReader<R> {
    pub fn new(inner: R, rules: EntryRules) -> (Self, PolicyHandle) {
        let handle = PolicyHandle::default();
        let reader = Self {
            inner,
            walker: Walker::default(),
            check: EntryCheck::new(rules),
            handle: handle.clone(),
            failed: None,
        };
        (reader, handle)
    }

    /// Like [`PolicyReader::new`], also recording each entry for
    /// [`PolicyHandle::next_seen`].
    pub(crate) fn recording(inner: R, rules: EntryRules) -> (Self, PolicyHandle) {
        let (mut reader, handle) = Self::new(inner, rules);
        reader.check.log = Some(Vec::new());
        handle.record_entries();
        (reader, handle)
    }

    fn finish(&self) -> io::Result<()> {
        if !self.walker.complete() {
            let offset = self.walker.offset();
            let message = if self.walker.at_end_marker() {
                format!(
                    "the tar stream ends after {offset} bytes with one zero block, not the two of the end-of-archive marker (truncated?)"
                )
            } else {
                format!(
                    "the tar stream ended after {offset} bytes and {} entries without the end-of-archive marker (truncated?)",
                    self.check.entries
                )
            };
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                PolicyViolation(message),
            ));
        }
        if self.check.entries == 0 {
            return Err(violation("the tar stream holds no entry".into()));
        }
        Ok(())
    }

    fn publish(&mut self, new: &[u8], result: &io::Result<()>) {
        let mut shared = self.handle.lock();
        shared.tar_bytes += new.len() as u64;
        let want = BLOCK
            .saturating_sub(shared.first_block.len())
            .min(new.len());
        shared.first_block.extend_from_slice(&new[..want]);
        shared.entries = self.check.entries;
        shared.file_bytes = self.check.file_bytes;
        if let (Some(log), Some(seen)) = (&mut shared.log, &mut self.check.log) {
            log.extend(seen.drain(..));
        }
        if let Err(e) = result {
            shared.violation = Some(e.to_string());
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for PolicyReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some((kind, message)) = &this.failed {
            return Poll::Ready(Err(io::Error::new(*kind, PolicyViolation(message.clone()))));
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        let result = if new.is_empty() {
            this.finish()
        } else {
            this.walker.advance(new, &mut this.check)
        };
        let passed = if result.is_ok() { new } else { &[] };
        this.publish(passed, &result);
        if let Err(e) = result {
            this.failed = Some((e.kind(), e.to_string()));
            buf.set_filled(before);
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio_tar::Header;

    /// A header built field by field, as a hostile archive would write it.
    struct H(Header);

    impl H {
        fn gnu(name: &str, kind: u8) -> Self {
            Self::new(Header::new_gnu(), name, kind)
        }

        fn ustar(name: &str, kind: u8) -> Self {
            Self::new(Header::new_ustar(), name, kind)
        }

        fn new(mut h: Header, name: &str, kind: u8) -> Self {
            // set_path refuses '..' and more, so write the raw name.
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.as_old_mut().linkflag = [kind];
            h.set_size(0);
            h.set_mode(if kind == b'5' { 0o755 } else { 0o644 });
            Self(h)
        }

        fn size(mut self, size: u64) -> Self {
            self.0.set_size(size);
            self
        }

        fn mode(mut self, mode: u32) -> Self {
            self.0.set_mode(mode);
            self
        }

        fn link(mut self, target: &str) -> Self {
            self.0.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
            self
        }

        fn raw(mut self, at: usize, bytes: &[u8]) -> Self {
            self.0.as_mut_bytes()[at..at + bytes.len()].copy_from_slice(bytes);
            self
        }

        fn bytes(mut self) -> Vec<u8> {
            self.0.set_cksum();
            self.0.as_bytes().to_vec()
        }
    }

    fn padded(mut data: Vec<u8>) -> Vec<u8> {
        data.resize(data.len().div_ceil(512) * 512, 0);
        data
    }

    /// A metadata header (`x`, `g`, `L`, `K`) carrying `body`.
    fn meta(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = H::ustar("PaxHeaders/x", kind)
            .size(body.len() as u64)
            .bytes();
        out.extend(padded(body.to_vec()));
        out
    }

    fn record(key: &str, value: &[u8]) -> Vec<u8> {
        // The length counts its own digits.
        let mut len = key.len() + value.len() + 3;
        while len != key.len() + value.len() + 3 + len.to_string().len() {
            len = key.len() + value.len() + 3 + len.to_string().len();
        }
        let mut out = format!("{len} {key}=").into_bytes();
        out.extend_from_slice(value);
        out.push(b'\n');
        assert_eq!(out.len(), len, "record length for {key}");
        out
    }

    fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
        let body: Vec<u8> = records.iter().flat_map(|(k, v)| record(k, v)).collect();
        meta(b'x', &body)
    }

    fn file(name: &str, data: &[u8]) -> Vec<u8> {
        let mut out = H::gnu(name, b'0').size(data.len() as u64).bytes();
        out.extend(padded(data.to_vec()));
        out
    }

    fn tar(parts: &[Vec<u8>]) -> Vec<u8> {
        let mut out = parts.concat();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    const VOLUME: EntryRules = EntryRules {
        target: TargetKind::Volume,
    };
    const BIND: EntryRules = EntryRules {
        target: TargetKind::Bind,
    };

    async fn read_chunked(
        bytes: &[u8],
        rules: EntryRules,
        chunk: usize,
    ) -> (io::Result<Vec<u8>>, PolicyHandle) {
        let chunks: Vec<io::Result<bytes::Bytes>> = bytes
            .chunks(chunk.max(1))
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        let reader = tokio_util::io::StreamReader::new(futures::stream::iter(chunks));
        let (mut policed, handle) = PolicyReader::new(reader, rules);
        let mut out = Vec::new();
        let result = policed.read_to_end(&mut out).await.map(|_| out);
        (result, handle)
    }

    /// Reads `bytes` through a [`PolicyReader`] in pieces of several sizes: the verdict must
    /// not depend on them, and an accepted stream must come out unchanged.
    async fn run(bytes: &[u8], rules: EntryRules) -> Result<PolicyHandle, String> {
        let mut verdicts = Vec::new();
        for chunk in [7, 512, bytes.len()] {
            let (result, handle) = read_chunked(bytes, rules, chunk).await;
            verdicts.push(match result {
                Ok(out) => {
                    assert_eq!(out, bytes, "bytes pass through unchanged");
                    assert_eq!(handle.tar_bytes(), bytes.len() as u64);
                    Ok(handle)
                }
                Err(e) => {
                    assert!(
                        matches!(
                            e.kind(),
                            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                        ),
                        "{e:?}"
                    );
                    assert!(e.get_ref().unwrap().is::<PolicyViolation>());
                    assert_eq!(handle.violation(), Some(e.to_string()));
                    Err(e.to_string())
                }
            });
        }
        let last = verdicts.pop().unwrap();
        for other in &verdicts {
            assert_eq!(
                other.as_ref().err(),
                last.as_ref().err(),
                "same verdict whatever the read sizes"
            );
        }
        last
    }

    async fn refused(what: &str, bytes: &[u8], rules: EntryRules, expected: &str) {
        match run(bytes, rules).await {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => assert!(e.contains(expected), "{what}: {e}"),
        }
    }

    async fn accepted(what: &str, bytes: &[u8], rules: EntryRules) -> PolicyHandle {
        run(bytes, rules)
            .await
            .unwrap_or_else(|e| panic!("{what}: refused: {e}"))
    }

    #[tokio::test]
    async fn an_archive_written_by_tokio_tar_passes_unchanged() {
        let mut builder = tokio_tar::Builder::new_non_terminated(Vec::new());
        let long = format!("./{}/{}", "d".repeat(120), "f".repeat(120));
        for (path, kind, data) in [
            ("./", EntryType::Directory, &b""[..]),
            ("./a/", EntryType::Directory, b""),
            ("./a/f", EntryType::Regular, b"hello"),
            (long.as_str(), EntryType::Regular, b"long"),
            ("./fifo", EntryType::Fifo, b""),
        ] {
            let mut h = Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            builder.append_data(&mut h, path, data).await.unwrap();
        }
        for (path, kind, target) in [
            ("./a/l", EntryType::Symlink, "/etc/passwd"),
            ("./a/h", EntryType::Link, "./a/f"),
        ] {
            let mut h = Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(0);
            h.set_link_name(target).unwrap();
            builder.append_data(&mut h, path, &b""[..]).await.unwrap();
        }
        builder.finish().await.unwrap();
        let bytes = builder.into_inner().await.unwrap();
        let handle = accepted("tokio-tar archive", &bytes, BIND).await;
        assert_eq!(handle.entries(), 7);
        assert_eq!(handle.file_bytes(), 9);
        assert_eq!(handle.first_block(), bytes[..512].to_vec());
    }

    #[tokio::test]
    async fn docker_style_pax_headers_pass() {
        // What Go's archive/tar writes for a long name, with an xattr (binary, with NULs)
        // and sub-second times.
        let long = format!("./{}", "n".repeat(200));
        let bytes = tar(&[
            pax(&[
                ("path", long.as_bytes()),
                ("mtime", b"1700000000.123456789"),
                ("atime", b"1700000000.5"),
                ("ctime", b"-1"),
                ("uid", b"1000"),
                ("gid", b"1000"),
                ("uname", b"app"),
                ("gname", b"app"),
                ("comment", b"made by hand"),
                (
                    "SCHILY.xattr.security.capability",
                    b"\x01\x00\x00\x02\x00\x20",
                ),
                ("SCHILY.xattr.user.note", b"x"),
            ]),
            file("./truncated-name", b"data"),
        ]);
        let handle = accepted("PAX", &bytes, VOLUME).await;
        assert_eq!((handle.entries(), handle.file_bytes()), (1, 4));
    }

    #[test]
    fn sizes_of_8_gib_and_more_are_read_from_pax_and_base_256() {
        const HUGE: u64 = (8 << 30) + 5;
        let mut walker = Walker::default();
        let mut check = EntryCheck::new(VOLUME);
        let mut bytes = pax(&[("size", HUGE.to_string().as_bytes())]);
        bytes.extend(H::ustar("./big", b'0').bytes());
        walker.advance(&bytes, &mut check).unwrap();
        assert_eq!((check.entries, check.file_bytes), (1, HUGE));
        assert!(!walker.at_end_marker());

        // GNU base-256 in the ustar field, as Go writes it in GNU format.
        let mut walker = Walker::default();
        let mut check = EntryCheck::new(VOLUME);
        let mut field = [0u8; 12];
        field[0] = 0x80;
        field[4..].copy_from_slice(&HUGE.to_be_bytes());
        let bytes = H::gnu("./big", b'0').raw(124, &field).bytes();
        walker.advance(&bytes, &mut check).unwrap();
        assert_eq!((check.entries, check.file_bytes), (1, HUGE));

        // A PAX size with a ustar size that disagrees is refused even when large.
        let mut walker = Walker::default();
        let mut check = EntryCheck::new(VOLUME);
        let mut bytes = pax(&[("size", HUGE.to_string().as_bytes())]);
        bytes.extend(H::ustar("./big", b'0').size(1).bytes());
        let err = walker.advance(&bytes, &mut check).unwrap_err();
        assert!(err.to_string().contains("disagrees"), "{err}");
    }

    #[tokio::test]
    async fn pax_records_outside_the_allow_list_are_refused() {
        for key in [
            "GNU.sparse.name",
            "GNU.sparse.realsize",
            "GNU.sparse.major",
            "GNU.sparse.minor",
            "GNU.sparse.map",
            "GNU.sparse.size",
            "GNU.sparse.numblocks",
            "GNU.sparse.offset",
            "GNU.sparse.numbytes",
        ] {
            let bytes = tar(&[pax(&[(key, b"1")]), file("./f", b"x")]);
            refused(key, &bytes, VOLUME, "GNU sparse").await;
        }
        for key in [
            "foo",
            "mode",
            "LIBARCHIVE.xattr.user.x",
            "SCHILY.devmajor",
            "SCHILY.acl.access",
            "SCHILY.fflags",
            "Path",
        ] {
            let bytes = tar(&[pax(&[(key, b"1")]), file("./f", b"x")]);
            refused(key, &bytes, VOLUME, "not one lifeboat accepts").await;
        }
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "NUL in path",
                pax(&[("path", b"./a\0/../../x")]),
                "NUL byte",
            ),
            ("NUL in uname", pax(&[("uname", b"a\0b")]), "NUL byte"),
            ("empty value", pax(&[("path", b"")]), "is empty"),
            (
                "repeated key",
                pax(&[("path", b"./a"), ("path", b"./b")]),
                "appears twice",
            ),
            (
                "xattr without a name",
                pax(&[("SCHILY.xattr.", b"x")]),
                "names no valid",
            ),
            ("signed size", pax(&[("size", b"+1")]), "not a number"),
            ("negative size", pax(&[("size", b"-1")]), "not a number"),
            ("huge uid", pax(&[("uid", b"4294967296")]), "not a number"),
            ("bad mtime", pax(&[("mtime", b"1.2.3")]), "not a time"),
            ("bad mtime", pax(&[("mtime", b"yesterday")]), "not a time"),
            ("bad length", meta(b'x', b"99 path=./x\n"), "length"),
            ("leading zero", meta(b'x', b"012 path=./x\n"), "length"),
            ("no '='", meta(b'x', b"12 path./xx\n"), "no '='"),
            ("no newline", meta(b'x', b"12 path=./xx"), "newline"),
            ("empty key", meta(b'x', b"9 =./xyz\n"), "empty key"),
        ];
        for (what, header, expected) in cases {
            let bytes = tar(&[header, file("./f", b"x")]);
            refused(what, &bytes, VOLUME, expected).await;
        }
    }

    #[tokio::test]
    async fn metadata_must_describe_exactly_one_entry() {
        let long = |name: &str| meta(b'L', format!("{name}\0").as_bytes());
        let long_link = |name: &str| meta(b'K', format!("{name}\0").as_bytes());
        let link = |name: &str| H::gnu(name, b'2').link("/t").bytes();
        let cases: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
            (
                "two PAX headers",
                vec![
                    pax(&[("path", b"./a")]),
                    pax(&[("mtime", b"1")]),
                    file("./f", b""),
                ],
                "follows a PAX header",
            ),
            (
                "PAX then long name",
                vec![pax(&[("mtime", b"1")]), long("./a"), file("./f", b"")],
                "follows a PAX header",
            ),
            (
                "long name and PAX path",
                vec![long("./a"), pax(&[("path", b"./b")]), file("./f", b"")],
                "both a GNU long name and a PAX path",
            ),
            (
                "long link and PAX linkpath",
                vec![long_link("/a"), pax(&[("linkpath", b"/b")]), link("./l")],
                "both a GNU long link and a PAX linkpath",
            ),
            (
                "two long names",
                vec![long("./a"), long("./b"), file("./f", b"")],
                "two GNU long names",
            ),
            (
                "two long links",
                vec![long_link("/a"), long_link("/b"), link("./l")],
                "two GNU long links",
            ),
            (
                "PAX at the end",
                vec![pax(&[("path", b"./a")])],
                "not by an entry",
            ),
            ("long name at the end", vec![long("./a")], "not by an entry"),
            (
                "empty long name",
                vec![meta(b'L', b""), file("./f", b"")],
                "empty",
            ),
            (
                "NUL-only long name",
                vec![meta(b'L', b"\0"), file("./f", b"")],
                "empty",
            ),
            (
                "bytes after the NUL",
                vec![meta(b'L', b"./a\0../../x"), file("./f", b"")],
                "after its NUL",
            ),
            (
                "PAX header in GNU format",
                vec![
                    {
                        let body = record("path", b"./a");
                        let mut out = H::gnu("x", b'x').size(body.len() as u64).bytes();
                        out.extend(padded(body));
                        out
                    },
                    file("./f", b""),
                ],
                "not in ustar format",
            ),
        ];
        for (what, parts, expected) in cases {
            refused(what, &tar(&parts), VOLUME, expected).await;
        }
        // Long name, long link and PAX (last) together are fine when they do not overlap.
        let bytes = tar(&[
            long("./long-name"),
            long_link("/long/target"),
            pax(&[("mtime", b"5")]),
            link("./short"),
        ]);
        accepted("L, K, x", &bytes, VOLUME).await;
    }

    #[tokio::test]
    async fn headers_must_read_alike_to_every_parser() {
        let mut bad_checksum = H::gnu("./f", b'0').bytes();
        bad_checksum[0] = b'g';
        let ustar = |name: &str| H::ustar(name, b'0');
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("bad checksum", bad_checksum, "checksum is wrong"),
            (
                "negative size",
                H::gnu("./f", b'0').raw(124, &[0xff; 12]).bytes(),
                "size field",
            ),
            (
                "base-256 size with high bytes",
                H::gnu("./f", b'0')
                    .raw(124, &[0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1])
                    .bytes(),
                "size field",
            ),
            (
                "octal size with garbage",
                H::gnu("./f", b'0').raw(124, b"0000000001x\0").bytes(),
                "size field",
            ),
            (
                "size with leading NULs",
                H::gnu("./f", b'0')
                    .raw(124, b"\0\0\0\0\0\0\0\0\0\0\x31\0")
                    .bytes(),
                "size field",
            ),
            (
                "bad mode",
                H::gnu("./f", b'0').raw(100, b"0x644\0\0\0").bytes(),
                "mode field",
            ),
            (
                "uid too large",
                H::gnu("./f", b'0')
                    .raw(108, &[0x80, 0, 0, 1, 0, 0, 0, 0])
                    .bytes(),
                "not a Linux id",
            ),
            (
                "ustar magic, other version",
                ustar("f").raw(263, b"xx").bytes(),
                "version other than 00",
            ),
            (
                "ustar magic, NUL version",
                ustar("f").raw(263, b"\0\0").bytes(),
                "version other than 00",
            ),
            (
                "star trailer",
                ustar("f").raw(345, b"evil").raw(508, b"tar\0").bytes(),
                "star header",
            ),
            (
                "pre-POSIX header",
                ustar("f").raw(257, &[0; 8]).bytes(),
                "neither a ustar nor a GNU",
            ),
            (
                "GNU atime Go cannot parse (it then reads a prefix)",
                H::gnu("f", b'0').raw(345, b"evil/prefix\0").bytes(),
                "atime field",
            ),
        ];
        for (what, header, expected) in cases {
            refused(what, &tar(&[header]), VOLUME, expected).await;
        }
        // A ustar prefix is joined to the name, as both readers do; the policy sees the whole.
        let bytes = tar(&[ustar("f").raw(345, b"..").bytes()]);
        refused("prefix", &bytes, VOLUME, "'../f': contains '..'").await;
    }

    #[tokio::test]
    async fn entry_types_and_their_sizes() {
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "sparse",
                H::gnu("./s", b'S').bytes(),
                "GNU sparse file (type 'S')",
            ),
            (
                "global header",
                meta(b'g', &record("path", b"./x")),
                "global PAX header",
            ),
            ("contiguous", H::gnu("./c", b'7').bytes(), "contiguous"),
            ("volume label", H::gnu("./v", b'V').bytes(), "('V')"),
            ("solaris header", H::ustar("./x", b'X').bytes(), "('X')"),
            ("dumpdir", H::gnu("./d", b'D').bytes(), "('D')"),
            ("multivolume", H::gnu("./m", b'M').bytes(), "('M')"),
            (
                "symlink with data",
                H::gnu("./l", b'2').link("/t").size(512).bytes(),
                "reads none for this type",
            ),
            (
                "directory with data",
                H::gnu("./d/", b'5').size(1).bytes(),
                "reads none for this type",
            ),
            (
                "hardlink with data",
                H::gnu("./h", b'1').link("./f").size(1).bytes(),
                "reads none for this type",
            ),
            (
                "regular named like a directory",
                H::gnu("./d/", 0).bytes(),
                "ends in '/'",
            ),
        ];
        for (what, header, expected) in cases {
            let mut entry = header;
            entry.extend_from_slice(&[b'x'; 512]);
            refused(what, &tar(&[file("./f", b"x"), entry]), VOLUME, expected).await;
        }
        // The NUL type is a regular file.
        let bytes = tar(&[H::gnu("./f", 0).size(3).bytes(), padded(b"abc".to_vec())]);
        assert_eq!(accepted("NUL type", &bytes, VOLUME).await.file_bytes(), 3);
    }

    #[tokio::test]
    async fn the_tree_policy() {
        let sym = |name: &str, target: &str| H::gnu(name, b'2').link(target).bytes();
        let hard = |name: &str, target: &str| H::gnu(name, b'1').link(target).bytes();
        let dir = |name: &str| H::gnu(name, b'5').bytes();
        let cases: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
            ("..", vec![file("./../escape", b"x")], "contains '..'"),
            ("inner ..", vec![file("./a/../../x", b"x")], "contains '..'"),
            ("absolute", vec![file("/etc/cron.d/x", b"x")], "absolute"),
            (
                "write through a symlink",
                vec![sym("./l", "/etc"), file("./l/passwd", b"x")],
                "a symlink the archive created",
            ),
            (
                "write deep through a symlink",
                vec![sym("./l", "/etc"), dir("./l/d/"), file("./l/d/x", b"x")],
                "a symlink the archive created",
            ),
            (
                "below a regular file",
                vec![file("./f", b"x"), file("./f/g", b"x")],
                "as a non-directory",
            ),
            (
                "hardlink out",
                vec![hard("./h", "/etc/shadow")],
                "absolute path",
            ),
            ("hardlink up", vec![hard("./h", "../x")], "contains '..'"),
            (
                "hardlink to a later file",
                vec![hard("./h", "./later"), file("./later", b"x")],
                "not an earlier file",
            ),
            (
                "hardlink to a directory",
                vec![dir("./d/"), hard("./h", "./d")],
                "not an earlier file",
            ),
            (
                "hardlink to itself",
                vec![file("./f", b"x"), hard("./f", "./f")],
                "not an earlier file",
            ),
            (
                "hardlink to a file since replaced by a symlink",
                vec![
                    file("./f", b"x"),
                    sym("./f", "/etc"),
                    hard("./h", "./f"),
                    file("./h/passwd", b"x"),
                ],
                "is below h, a symlink the archive created",
            ),
            (
                "hardlink to a file whose directory was replaced",
                vec![file("./d/f", b"x"), file("./d", b"x"), hard("./h", "./d/f")],
                "not an earlier file",
            ),
            (
                "symlink climbing out",
                vec![sym("./a/l", "../../etc")],
                "leads out of the directory",
            ),
            (
                "absolute symlink climbing out",
                vec![sym("./l", "/../etc")],
                "leads out of the directory",
            ),
            (
                "symlink without target",
                vec![H::gnu("./l", b'2').bytes()],
                "without a target",
            ),
            ("root", vec![file(".", b"x")], "volume root"),
            ("root symlink", vec![sym(".", "/")], "volume root"),
        ];
        for (what, parts, expected) in cases {
            refused(what, &tar(&parts), VOLUME, expected).await;
        }
        let fine: Vec<(&str, Vec<Vec<u8>>)> = vec![
            ("absolute symlink", vec![sym("./l", "/etc/passwd")]),
            ("relative symlink inside", vec![sym("./a/l", "../b")]),
            (
                "symlink replaced by a directory",
                vec![sym("./l", "/tmp"), dir("./l/"), file("./l/f", b"x")],
            ),
            (
                "file replaced by a directory",
                vec![file("./d", b"x"), dir("./d/"), file("./d/f", b"x")],
            ),
            ("hardlink", vec![file("./f", b"x"), hard("./h", "f")]),
            (
                "hardlink to a hardlink",
                vec![file("./f", b"x"), hard("./h", "./f"), hard("./i", "./h")],
            ),
            (
                "root directory",
                vec![dir("./"), dir("./a/"), file("./a/f", b"x")],
            ),
        ];
        for (what, parts) in fine {
            accepted(what, &tar(&parts), VOLUME).await;
        }
    }

    #[tokio::test]
    async fn bind_targets_get_no_devices_setuid_or_capabilities() {
        let cases: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
            (
                "char device",
                vec![H::gnu("./null", b'3').bytes()],
                "device node",
            ),
            (
                "block device",
                vec![H::gnu("./sda", b'4').bytes()],
                "device node",
            ),
            (
                "setuid",
                vec![H::gnu("./su", b'0').mode(0o4755).bytes()],
                "setuid or setgid",
            ),
            (
                "setgid",
                vec![H::gnu("./sg", b'0').mode(0o2755).bytes()],
                "setuid or setgid",
            ),
            (
                "setgid directory",
                vec![H::gnu("./d/", b'5').mode(0o2775).bytes()],
                "setuid or setgid",
            ),
            (
                "capabilities",
                vec![
                    pax(&[("SCHILY.xattr.security.capability", b"\x01\0\0\x02")]),
                    file("./ping", b""),
                ],
                "file capabilities",
            ),
        ];
        for (what, parts, expected) in cases {
            let bytes = tar(&parts);
            refused(what, &bytes, BIND, expected).await;
            accepted(what, &bytes, VOLUME).await;
        }
        accepted("fifo", &tar(&[H::gnu("./p", b'6').bytes()]), BIND).await;
    }

    #[tokio::test]
    async fn the_archive_must_end_properly() {
        let whole = tar(&[file("./f", &[7u8; 1000])]);
        for cut in [0, 100, 512, 1024, 1536, whole.len() - 1024, whole.len() - 1] {
            let err = run(&whole[..cut], VOLUME).await.err().unwrap();
            assert!(err.contains("truncated"), "cut at {cut}: {err}");
        }
        let (result, _) = read_chunked(&whole[..whole.len() - 512], VOLUME, 512).await;
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        refused("no entry", &[0u8; 1024], VOLUME, "holds no entry").await;
        refused("garbage", &[0x55u8; 2048], VOLUME, "checksum is wrong").await;
        let mut trailing = whole.clone();
        trailing.extend_from_slice(&[0u8; 100]);
        trailing.push(1);
        refused(
            "data after the end",
            &trailing,
            VOLUME,
            "after the end-of-archive",
        )
        .await;
        let mut padded = whole.clone();
        padded.extend_from_slice(&[0u8; 9216]);
        accepted("record padding", &padded, VOLUME).await;
    }

    #[tokio::test]
    async fn a_refused_stream_stays_refused() {
        let bytes = tar(&[file("./../x", b"x"), file("./y", b"y")]);
        let (mut policed, handle) = PolicyReader::new(&bytes[..], VOLUME);
        let mut buf = vec![0u8; 4096];
        let first = policed.read(&mut buf).await.unwrap_err();
        assert_eq!(first.kind(), io::ErrorKind::InvalidData);
        assert!(
            first.to_string().contains("bad tar entry './../x'"),
            "{first}"
        );
        let again = policed.read(&mut buf).await.unwrap_err();
        assert_eq!(again.to_string(), first.to_string());
        assert_eq!(handle.tar_bytes(), 0, "nothing of the refused read passed");
        // The restore path sorts it as a verification failure with the policy's words.
        let sorted = super::super::PipelineError::from_read_chain(again);
        assert!(
            matches!(&sorted, super::super::PipelineError::Verification(m) if m.starts_with("bad tar entry")),
            "{sorted:?}"
        );
    }
}
