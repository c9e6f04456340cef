//! What a deduplicated volume's chunk list costs in memory at a TiB, measured: a backup of
//! `CHUNKS` chunks (default 2,097,152: 1 TiB at the 512 KiB average) committed to a folder
//! store, once with the list in the manifest (format 3, as before) and once in list objects
//! (format 5), then read back as restore, verify and the next night's backup read it. A
//! counting allocator gives the peak of the heap above what was live before each step; the
//! objects lie on disk, so the store holds nothing in memory.
//!
//!   cargo bench --bench chunk_lists                  # 2,097,152 chunks
//!   CHUNKS=20480 cargo bench --bench chunk_lists     # 10 GiB's worth
//!   (`cargo test --all-targets` runs it once at 20,480 chunks, as a smoke test)
//!
//! Not a test: it prints a markdown table for BENCHMARKS.md.

use lifeboat::auth::{Signer, Trust};
use lifeboat::format::{self, ChunkRef, Hex32, Manifest, VolumeRecord};
use lifeboat::manifest::TrustPolicy;
use lifeboat::repo::Repo;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting the bytes live and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let live = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                - layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `step` and returns what it gave, the peak of the heap above what was live before it
/// (MiB), and its wall time (s).
async fn measured<T>(step: impl std::future::Future<Output = T>) -> (T, f64, f64) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let start = std::time::Instant::now();
    let out = step.await;
    let peak = PEAK.load(Ordering::Relaxed) - before;
    (
        out,
        peak as f64 / (1 << 20) as f64,
        start.elapsed().as_secs_f64(),
    )
}

fn chunks(n: usize) -> Vec<ChunkRef> {
    (0..n as u64)
        .map(|i| ChunkRef {
            id: Hex32(*blake3::hash(&i.to_le_bytes()).as_bytes()),
            size: 300_000 + i % 200_000,
            sha256: Hex32(*blake3::hash(&(!i).to_le_bytes()).as_bytes()),
            plain: 524_288 + i % 100_000,
        })
        .collect()
}

fn manifest(id: &str, chunks: Vec<ChunkRef>, signer: &Signer) -> Manifest {
    let stored = chunks.iter().map(|c| c.size).sum();
    let plain = chunks.iter().map(|c| c.plain).sum();
    Manifest {
        format: format::FORMAT.into(),
        format_version: format::CHUNKED_FORMAT,
        backup_id: id.into(),
        app: "big".into(),
        host: "bench".into(),
        lifeboat_version: env!("CARGO_PKG_VERSION").into(),
        started_at: chrono::Utc::now(),
        finished_at: chrono::Utc::now(),
        downtime_seconds: 1.0,
        app_version: Default::default(),
        volumes: vec![VolumeRecord {
            name: "big_data".into(),
            kind: format::SourceKind::Volume,
            compose_volume: Some("data".into()),
            driver: Some("local".into()),
            labels: Default::default(),
            service: "app".into(),
            container_path: "/data".into(),
            object: format::object_name("big_data", format::Compression::Zstd),
            stored_size: stored,
            sha256: format::chunk_list_digest(&chunks),
            tar_size: plain,
            compression: format::Compression::Zstd,
            encryption: format::Encryption {
                scheme: "age".into(),
                recipients: vec!["age1bench".into()],
            },
            root: None,
            chunks,
            lists: Vec::new(),
            new_bytes: Some(0),
            segments: 1,
        }],
        signer: Some(lifeboat::auth::openssh(&signer.public())),
    }
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; `cargo test --all-targets` (CI) runs this as a smoke test,
    // at 10 GiB's chunk count.
    let benched = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("CHUNKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benched { 2_097_152 } else { 20_480 });
    let work = tempfile::tempdir_in("/var/tmp")?;
    let objects = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(
        work.path(),
    )?);
    let repo = Repo::over(objects, "", "bench");
    let signer = Signer::from_seed(&[7u8; 32]);
    let policy = TrustPolicy {
        trust: Trust::new(vec![signer.public()]),
        allow_unsigned: false,
    };
    println!(
        "{n} chunks ({:.0} GiB at the 512 KiB average); heap peaks above what was live before each step:\n",
        n as f64 / 2048.0
    );
    println!("| step | format 3 (list in the manifest) | format 5 (list objects) |");
    println!("|---|---:|---:|");
    let mut rows: Vec<(String, String, String)> = Vec::new();
    // The backup's chunks in memory, as the run holds them when it writes the manifest.
    let mut written = Vec::new();
    for (id, listed) in [
        ("20260101T000000.000Z", false),
        ("20260102T000000.000Z", true),
    ] {
        let mut m = manifest(id, chunks(n), &signer);
        let ((), peak, secs) = measured(async {
            if listed {
                let store = repo.chunk_store("big");
                let lists =
                    lifeboat::pipeline::chunk_list::store_lists(&store, &m.volumes[0].chunks)
                        .await
                        .expect("lists stored");
                m.volumes[0].lists = lists;
                m.format_version = format::LISTED_FORMAT;
            }
            repo.commit(&m, &signer).await.expect("committed");
        })
        .await;
        written.push((peak, secs, dir_bytes(&work.path().join("big").join(id))));
        drop(m);
    }
    let list_bytes = dir_bytes(&work.path().join("big").join("chunks"));
    rows.push((
        "manifest (+ list objects) stored".into(),
        format!("{:.1} MiB", written[0].2 as f64 / (1 << 20) as f64),
        format!(
            "{:.1} KiB + {:.1} MiB",
            written[1].2 as f64 / 1024.0,
            list_bytes as f64 / (1 << 20) as f64
        ),
    ));
    rows.push((
        "write it (commit; format 5 also stores the lists)".into(),
        format!("{:.0} MiB, {:.1} s", written[0].0, written[0].1),
        format!("{:.0} MiB, {:.1} s", written[1].0, written[1].1),
    ));
    let mut read = Vec::new();
    for id in ["20260101T000000.000Z", "20260102T000000.000Z"] {
        let (found, peak, secs) = measured(repo.read("big", Some(id), &policy)).await;
        let found = found?;
        assert_eq!(found.manifest.volumes[0].chunks.len(), n);
        read.push((peak, secs));
    }
    rows.push((
        "read it back and authenticate it (restore, verify, the next backup)".into(),
        format!("{:.0} MiB, {:.1} s", read[0].0, read[0].1),
        format!("{:.0} MiB, {:.1} s", read[1].0, read[1].1),
    ));
    rows.push((
        "the chunks themselves, held (80 bytes each)".into(),
        format!("{:.0} MiB", (n * 80) as f64 / (1 << 20) as f64),
        format!("{:.0} MiB", (n * 80) as f64 / (1 << 20) as f64),
    ));
    for (step, three, five) in rows {
        println!("| {step} | {three} | {five} |");
    }
    Ok(())
}
