//! The restore-side tar check against what the real Docker engine extracts.
//!
//! For each archive of a table (hostile ones built byte by byte, plus benign ones, among them
//! archives Docker itself wrote), the test runs `check_archive` in-process and extracts the same
//! bytes into a fresh container volume twice: through the restore path (`docker::extract_into`,
//! the archive API with lifeboat's options) and with `docker cp -a -`. It then lists what Docker
//! wrote (`docker cp <c>:/dst -`) and compares it with the tree the parsed entries describe.
//!
//! Asserted: every archive the check accepts is extracted by Docker (through the restore path)
//! to exactly the tree the check saw — names, types, sizes, symlink targets — and every archive
//! Docker fails on, or extracts to anything else, is refused by the check. A table of what
//! Docker did with each archive is printed.

mod common;

use common::{IMAGE, docker, ensure_docker};
use futures::StreamExt;
use lifeboat::pipeline::tar_check::{EntryRules, TargetKind, check_archive};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use tokio_tar::{EntryType, Header};

// --- archives, byte by byte ---------------------------------------------------------------

struct H(Header);

impl H {
    fn gnu(name: &str, kind: u8) -> Self {
        Self::new(Header::new_gnu(), name, kind)
    }

    fn ustar(name: &str, kind: u8) -> Self {
        Self::new(Header::new_ustar(), name, kind)
    }

    fn new(mut h: Header, name: &str, kind: u8) -> Self {
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkflag = [kind];
        h.set_size(0);
        h.set_mode(if kind == b'5' { 0o755 } else { 0o644 });
        h.set_mtime(1_700_000_000);
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

fn meta(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = H::ustar("PaxHeaders/x", kind)
        .size(body.len() as u64)
        .bytes();
    out.extend(padded(body.to_vec()));
    out
}

fn record(key: &str, value: &[u8]) -> Vec<u8> {
    let mut len = key.len() + value.len() + 3;
    while len != key.len() + value.len() + 3 + len.to_string().len() {
        len = key.len() + value.len() + 3 + len.to_string().len();
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
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

fn dir(name: &str) -> Vec<u8> {
    H::gnu(name, b'5').bytes()
}

fn sym(name: &str, target: &str) -> Vec<u8> {
    H::gnu(name, b'2').link(target).bytes()
}

fn hard(name: &str, target: &str) -> Vec<u8> {
    H::gnu(name, b'1').link(target).bytes()
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

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    rules: EntryRules,
    /// Built to be refused (hostile) or accepted (benign).
    hostile: bool,
}

fn hostile(name: &'static str, bytes: Vec<u8>) -> Case {
    Case {
        name,
        bytes,
        rules: VOLUME,
        hostile: true,
    }
}

fn hostile_cases() -> Vec<Case> {
    let root = dir("./");
    // The old GNU sparse header: one chunk of 5 bytes at offset 0, real size 5.
    let sparse_s = H::gnu("./sparse", b'S')
        .size(5)
        .raw(386, b"00000000000\0")
        .raw(398, b"00000000005\0")
        .raw(483, b"00000000005\0")
        .bytes();
    // A symlink whose "data" (Go reads none for symlinks) is a header of its own.
    let mut smuggling_symlink = H::gnu("./l", b'2').link("t").size(512 + 512).bytes();
    smuggling_symlink.extend(file("./smuggled", b"hidden"));
    vec![
        hostile(
            "GNU.sparse 0.1 (PAX name/map)",
            tar(&[
                root.clone(),
                pax(&[
                    ("GNU.sparse.numblocks", b"1"),
                    ("GNU.sparse.map", b"0,5"),
                    ("GNU.sparse.name", b"./renamed"),
                    ("GNU.sparse.size", b"5"),
                ]),
                file("./f", b"hello"),
            ]),
        ),
        hostile(
            "GNU.sparse 1.0 (map in data)",
            tar(&[
                root.clone(),
                pax(&[
                    ("GNU.sparse.major", b"1"),
                    ("GNU.sparse.minor", b"0"),
                    ("GNU.sparse.name", b"./renamed"),
                    ("GNU.sparse.realsize", b"5"),
                ]),
                {
                    let mut data = padded(b"1\n0\n5\n".to_vec());
                    data.extend_from_slice(b"hello");
                    file("./f", &data)
                },
            ]),
        ),
        hostile(
            "sparse type 'S'",
            tar(&[root.clone(), sparse_s, padded(b"hello".to_vec())]),
        ),
        hostile(
            "global header 'g'",
            tar(&[
                root.clone(),
                meta(b'g', &record("path", b"./global")),
                file("./f", b"x"),
            ]),
        ),
        hostile(
            "unknown PAX key",
            tar(&[
                root.clone(),
                pax(&[("LIBARCHIVE.xattr.user.x", b"dmFsdWU=")]),
                file("./f", b"x"),
            ]),
        ),
        hostile(
            "PAX path vs GNU long name",
            tar(&[
                root.clone(),
                meta(b'L', b"./from-long-name\0"),
                pax(&[("path", b"./from-pax")]),
                file("./f", b"x"),
            ]),
        ),
        hostile(
            "PAX size != ustar size",
            tar(&[root.clone(), pax(&[("size", b"1024")]), {
                let mut out = H::gnu("./f", b'0').bytes();
                out.extend(file("./smuggled", b"hidden"));
                out.extend(padded(vec![0u8; 1]));
                out
            }]),
        ),
        hostile(
            "two PAX headers in a row",
            tar(&[
                root.clone(),
                pax(&[("path", b"./first")]),
                pax(&[("mtime", b"1")]),
                file("./f", b"x"),
            ]),
        ),
        hostile(
            "PAX header at the end",
            tar(&[root.clone(), file("./f", b"x"), pax(&[("path", b"./g")])]),
        ),
        hostile(
            "NUL in PAX path",
            tar(&[root.clone(), pax(&[("path", b"./a\0b")]), file("./f", b"x")]),
        ),
        hostile(
            "empty PAX path",
            tar(&[root.clone(), pax(&[("path", b"")]), file("./f", b"x")]),
        ),
        hostile(
            "malformed PAX length",
            tar(&[
                root.clone(),
                meta(b'x', b"99 path=./p\n"),
                file("./f", b"x"),
            ]),
        ),
        hostile(
            "empty GNU long name",
            tar(&[root.clone(), meta(b'L', b"\0"), file("./f", b"x")]),
        ),
        hostile("bad checksum", {
            let mut h = H::gnu("./f", b'0').size(1).bytes();
            h[148..156].copy_from_slice(b"0000000\0");
            tar(&[root.clone(), h, padded(b"x".to_vec())])
        }),
        hostile(
            "base-256 size, high bytes",
            tar(&[
                root.clone(),
                H::gnu("./f", b'0')
                    .raw(124, &[0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1])
                    .bytes(),
                padded(b"x".to_vec()),
            ]),
        ),
        hostile(
            "symlink with data (hides a header)",
            tar(&[root.clone(), smuggling_symlink]),
        ),
        hostile(
            "NUL type named dir/",
            tar(&[root.clone(), H::gnu("./d/", 0).bytes(), file("./d/f", b"x")]),
        ),
        hostile(
            "ustar magic, version xx",
            tar(&[
                root.clone(),
                H::ustar("f", b'0')
                    .size(1)
                    .raw(263, b"xx")
                    .raw(345, b"pre")
                    .bytes(),
                padded(b"x".to_vec()),
            ]),
        ),
        hostile(
            "GNU, bad atime + prefix",
            tar(&[
                root.clone(),
                H::gnu("f", b'0').size(1).raw(345, b"pre\0").bytes(),
                padded(b"x".to_vec()),
            ]),
        ),
        hostile(
            "contiguous '7'",
            tar(&[
                root.clone(),
                H::gnu("./c", b'7').size(1).bytes(),
                padded(b"x".to_vec()),
            ]),
        ),
        hostile(
            "unknown type 'V'",
            tar(&[root.clone(), H::gnu("./v", b'V').bytes()]),
        ),
        hostile("'..' path", tar(&[root.clone(), file("./../escape", b"x")])),
        hostile("absolute path", tar(&[root.clone(), file("/abs", b"x")])),
        hostile(
            "symlink escape",
            tar(&[root.clone(), sym("./l", "/tmp"), file("./l/through", b"x")]),
        ),
        hostile(
            "symlink climbing out",
            tar(&[root.clone(), dir("./a/"), sym("./a/l", "../../etc")]),
        ),
        hostile(
            "below a regular file",
            tar(&[root.clone(), file("./f", b"x"), file("./f/g", b"x")]),
        ),
        hostile(
            "hardlink outside",
            tar(&[root.clone(), hard("./h", "/bin/busybox")]),
        ),
        hostile(
            "hardlink to a later file",
            tar(&[root.clone(), hard("./h", "./later"), file("./later", b"x")]),
        ),
        hostile(
            "hardlink via replaced symlink",
            tar(&[
                root.clone(),
                file("./f", b"x"),
                sym("./f", "/tmp"),
                hard("./h", "./f"),
                file("./h/through", b"x"),
            ]),
        ),
        hostile("root not a directory", tar(&[file(".", b"x")])),
        hostile("data after end marker", {
            let mut t = tar(&[root.clone(), file("./f", b"x")]);
            t.extend(file("./after", b"x"));
            t
        }),
        hostile("one zero block at the end", {
            let mut t = [root.clone(), file("./f", b"x")].concat();
            t.extend_from_slice(&[0u8; 512]);
            t
        }),
        hostile("no end marker", [root.clone(), file("./f", b"x")].concat()),
        Case {
            name: "char device (bind)",
            bytes: tar(&[root.clone(), H::gnu("./null", b'3').bytes()]),
            rules: BIND,
            hostile: true,
        },
        Case {
            name: "setuid file (bind)",
            bytes: tar(&[root.clone(), H::gnu("./su", b'0').mode(0o4755).bytes()]),
            rules: BIND,
            hostile: true,
        },
    ]
}

fn benign(name: &'static str, bytes: Vec<u8>) -> Case {
    Case {
        name,
        bytes,
        rules: VOLUME,
        hostile: false,
    }
}

async fn builder_archive() -> Vec<u8> {
    let mut builder = tokio_tar::Builder::new_non_terminated(Vec::new());
    let long = format!("./long/{}", "n".repeat(150));
    let entries: Vec<(&str, EntryType, &[u8], Option<&str>)> = vec![
        ("./", EntryType::Directory, b"", None),
        ("./a/", EntryType::Directory, b"", None),
        ("./a/f", EntryType::Regular, b"hello", None),
        ("./a/zeros", EntryType::Regular, &[0u8; 3000], None),
        ("./a/abs", EntryType::Symlink, b"", Some("/etc/passwd")),
        ("./a/rel", EntryType::Symlink, b"", Some("../a/f")),
        ("./a/hard", EntryType::Link, b"", Some("./a/f")),
        ("./fifo", EntryType::Fifo, b"", None),
        ("./empty", EntryType::Regular, b"", None),
        (long.as_str(), EntryType::Regular, b"long", None),
        ("./was-a-file", EntryType::Regular, b"x", None),
        ("./was-a-file/", EntryType::Directory, b"", None),
        ("./was-a-file/in", EntryType::Regular, b"y", None),
    ];
    for (path, kind, data, link) in entries {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(1_700_000_000);
        if let Some(link) = link {
            h.set_link_name(link).unwrap();
        }
        builder.append_data(&mut h, path, data).await.unwrap();
    }
    builder.finish().await.unwrap();
    builder.into_inner().await.unwrap()
}

// --- trees ------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File(u64),
    Symlink(String),
    Char,
    Block,
    Fifo,
}

type Tree = BTreeMap<PathBuf, Node>;

/// An entry as tokio-tar parses it.
struct Parsed {
    path: Vec<u8>,
    kind: EntryType,
    link: Option<Vec<u8>>,
    size: u64,
}

async fn parse(bytes: &[u8]) -> Result<Vec<Parsed>, String> {
    let mut archive = tokio_tar::Archive::new(bytes);
    let mut entries = archive.entries().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while let Some(entry) = entries.next().await {
        let entry = entry.map_err(|e| e.to_string())?;
        out.push(Parsed {
            path: entry.path_bytes().map_err(|e| e.to_string())?.into_owned(),
            kind: entry.header().entry_type(),
            link: entry
                .link_name_bytes()
                .map_err(|e| e.to_string())?
                .map(|l| l.into_owned()),
            size: entry.effective_size(),
        });
    }
    Ok(out)
}

fn os(bytes: &[u8]) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    Path::new(std::ffi::OsStr::from_bytes(bytes))
}

/// `filepath.Clean` relative to the extraction root, as Docker joins names: `None` when the
/// name climbs out.
fn clean(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir if !out.pop() => return None,
            _ => {}
        }
    }
    Some(out)
}

/// The tree Docker should write for these entries, following its rules (an entry replaces
/// what was at its path, subtree included, unless both are directories; missing parents are
/// created as directories); `Err` when the entries cannot be extracted as they read.
fn expected_tree(entries: &[Parsed]) -> Result<Tree, String> {
    let mut tree = Tree::new();
    for entry in entries {
        let name = String::from_utf8_lossy(&entry.path).into_owned();
        let path = clean(os(&entry.path)).ok_or(format!("{name} climbs out"))?;
        if path.as_os_str().is_empty() {
            if entry.kind != EntryType::Directory {
                return Err("the root is not a directory".into());
            }
            continue;
        }
        for ancestor in path.ancestors().skip(1) {
            if ancestor.as_os_str().is_empty() {
                break;
            }
            match tree.get(ancestor) {
                None => {
                    tree.insert(ancestor.to_path_buf(), Node::Dir);
                }
                Some(Node::Dir) => {}
                Some(other) => return Err(format!("{name} is below a {other:?}")),
            }
        }
        let link = entry
            .link
            .as_deref()
            .map(|l| String::from_utf8_lossy(l).into_owned());
        let node = match entry.kind {
            EntryType::Directory => Node::Dir,
            EntryType::Regular => Node::File(entry.size),
            EntryType::Symlink => Node::Symlink(link.ok_or("symlink without target")?),
            EntryType::Char => Node::Char,
            EntryType::Block => Node::Block,
            EntryType::Fifo => Node::Fifo,
            EntryType::Link => {
                let target = clean(os(entry.link.as_deref().unwrap_or_default()))
                    .ok_or(format!("{name} links out"))?;
                match tree.get(&target) {
                    Some(Node::Dir) | None => {
                        return Err(format!("{name} links to {:?}", tree.get(&target)));
                    }
                    // link(2) does not follow a symlink: the link is what its target is.
                    Some(node) => node.clone(),
                }
            }
            other => return Err(format!("{name} has type {other:?}")),
        };
        if !(node == Node::Dir && tree.get(&path) == Some(&Node::Dir)) {
            let below: Vec<PathBuf> = tree
                .keys()
                .filter(|p| p.starts_with(&path))
                .cloned()
                .collect();
            for p in below {
                tree.remove(&p);
            }
            tree.insert(path, node);
        }
    }
    Ok(tree)
}

/// The tree `docker cp <container>:/dst -` lists.
async fn docker_tree(container: &str) -> Result<Tree, String> {
    let output = Command::new("docker")
        .args(["cp", &format!("{container}:/dst"), "-"])
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
    }
    let mut tree = Tree::new();
    for entry in parse(&output.stdout).await? {
        let strip = |bytes: &[u8]| -> PathBuf {
            let p = os(bytes);
            p.strip_prefix("dst").unwrap_or(p).to_path_buf()
        };
        let path = strip(&entry.path);
        if path.as_os_str().is_empty() {
            continue;
        }
        let node = match entry.kind {
            EntryType::Directory => Node::Dir,
            EntryType::Regular => Node::File(entry.size),
            EntryType::Symlink => Node::Symlink(
                String::from_utf8_lossy(entry.link.as_deref().unwrap_or_default()).into(),
            ),
            EntryType::Char => Node::Char,
            EntryType::Block => Node::Block,
            EntryType::Fifo => Node::Fifo,
            EntryType::Link => {
                let target = strip(entry.link.as_deref().unwrap_or_default());
                tree.get(&target).cloned().unwrap_or(Node::File(u64::MAX))
            }
            other => return Err(format!("docker listed a {other:?}")),
        };
        tree.insert(path, node);
    }
    Ok(tree)
}

// --- Docker -------------------------------------------------------------------------------

/// A created, never started container with a fresh anonymous volume at /dst; removed on drop.
struct Scratch(String);

impl Scratch {
    fn new() -> Self {
        Self(docker(&["create", "-v", "/dst", IMAGE]))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// What Docker did with an archive: the tree it wrote, or its error.
type Outcome = Result<Tree, String>;

/// Extracts through the restore path: the archive API with lifeboat's options.
async fn extract_restore_path(engine: &bollard::Docker, bytes: &[u8]) -> Outcome {
    let scratch = Scratch::new();
    let body = futures::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(
        bytes.to_vec(),
    ))]);
    lifeboat::docker::extract_into(engine, &scratch.0, "/dst", body)
        .await
        .map_err(|e| format!("{e:#}"))?;
    docker_tree(&scratch.0).await
}

/// Extracts with `docker cp -a - <container>:/dst` (which also refuses to replace a directory
/// with a non-directory or back).
async fn extract_docker_cp(bytes: &[u8]) -> Outcome {
    use std::io::Write;
    let scratch = Scratch::new();
    let mut child = Command::new("docker")
        .args(["cp", "-a", "-", &format!("{}:/dst", scratch.0)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    // A refused stream may close stdin early: the exit status tells.
    let _ = child.stdin.take().unwrap().write_all(bytes);
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
    }
    docker_tree(&scratch.0).await
}

/// An archive Docker itself wrote (`docker cp <c>:<path> -`) after extracting `bytes`.
async fn docker_written(engine: &bollard::Docker, bytes: &[u8]) -> Vec<u8> {
    let scratch = Scratch::new();
    let body = futures::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(
        bytes.to_vec(),
    ))]);
    lifeboat::docker::extract_into(engine, &scratch.0, "/dst", body)
        .await
        .unwrap();
    let output = Command::new("docker")
        .args(["cp", &format!("{}:/dst/.", scratch.0), "-"])
        .output()
        .unwrap();
    assert!(output.status.success());
    output.stdout
}

fn short(text: &str, max: usize) -> String {
    let text = text.replace('\n', " ");
    // Docker's own words, without the layers of context around them.
    let text = text
        .rsplit_once("Error processing tar file(exit status 1): ")
        .map_or(text.as_str(), |(_, rest)| rest)
        .to_string();
    if text.chars().count() <= max {
        text
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

fn describe(outcome: &Outcome, expected: &Result<Tree, String>) -> String {
    match (outcome, expected) {
        (Err(e), _) => format!("error: {}", short(e, 70)),
        (Ok(tree), Ok(exp)) if tree == exp => format!("ok, as parsed ({} paths)", tree.len()),
        (Ok(tree), _) => {
            let names: Vec<String> = tree
                .iter()
                .map(|(p, n)| match n {
                    Node::Dir => format!("{}/", p.display()),
                    Node::File(size) => format!("{}({size})", p.display()),
                    Node::Symlink(t) => format!("{}->{t}", p.display()),
                    other => format!("{}[{other:?}]", p.display()),
                })
                .collect();
            short(&format!("ok, DIFFERENT tree: {}", names.join(" ")), 90)
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_check_refuses_whatever_docker_would_extract_differently() {
    ensure_docker();
    let engine = lifeboat::docker::connect()
        .await
        .expect("the Docker engine answers (ensure_docker passed)");

    let built = tar(&[builder_archive().await]);
    let mut cases = vec![benign("tokio-tar Builder archive", built.clone())];
    cases.push(benign(
        "Docker-written re-export",
        docker_written(&engine, &built).await,
    ));
    cases.push(benign("busybox /bin, Docker-written", {
        let scratch = Scratch::new();
        let output = Command::new("docker")
            .args(["cp", &format!("{}:/bin", scratch.0), "-"])
            .output()
            .unwrap();
        assert!(output.status.success());
        output.stdout
    }));
    cases.push(benign(
        "PAX long name, xattr, device (volume)",
        tar(&[
            dir("./"),
            pax(&[
                ("path", format!("./{}", "p".repeat(180)).as_bytes()),
                ("mtime", b"1700000000.25"),
                ("SCHILY.xattr.user.note", b"kept"),
            ]),
            file("./short", b"pax"),
            H::gnu("./null", b'3').bytes(),
            H::gnu("./su", b'0').mode(0o4755).bytes(),
        ]),
    ));
    cases.push(benign(
        "hardlinks to a symlink, a FIFO and a device (as Docker writes them)",
        tar(&[
            dir("./"),
            file("./f", b"x"),
            sym("./s", "f"),
            hard("./s-hard", "./s"),
            H::gnu("./fifo", b'6').bytes(),
            hard("./fifo-hard", "./fifo"),
            H::gnu("./null", b'3').bytes(),
            hard("./null-hard", "./null"),
        ]),
    ));
    cases.extend(hostile_cases());

    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for case in &cases {
        let checked = check_archive(&case.bytes[..], case.rules).await;
        let parsed = parse(&case.bytes).await;
        let expected = parsed
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|entries| expected_tree(entries));
        let restore = extract_restore_path(&engine, &case.bytes).await;
        let cp = extract_docker_cp(&case.bytes).await;
        let same = matches!((&restore, &expected), (Ok(t), Ok(e)) if t == e);
        rows.push(format!(
            "| {:<38} | {:<8} | {:<62} | {}",
            case.name,
            if checked.is_ok() {
                "accepted"
            } else {
                "refused"
            },
            describe(&restore, &expected),
            describe(&cp, &expected),
        ));
        match &checked {
            Ok(_) if !same => failures.push(format!(
                "{}: accepted, but Docker {}",
                case.name,
                describe(&restore, &expected)
            )),
            Ok(_) if case.hostile => {
                failures.push(format!("{}: hostile archive accepted", case.name))
            }
            Err(e) if !case.hostile => failures.push(format!("{}: refused: {e}", case.name)),
            _ => {}
        }
        if let Err(e) = &checked {
            eprintln!("{}: {e}", case.name);
        }
    }
    println!(
        "\n| {:<38} | {:<8} | {:<62} | docker cp -a -\n{}",
        "archive",
        "check",
        "Docker through the restore path",
        rows.join("\n")
    );
    assert!(failures.is_empty(), "{failures:#?}");
}
