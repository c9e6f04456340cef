//! A TCP relay between lifeboat and a store, for the tests where TCP itself matters: cut or
//! stalled connections, throttled uplinks. Only the test binaries that need it include it
//! (`#[path = "common/proxy.rs"] mod proxy;`).

#![allow(dead_code)]

/// A TCP relay on 127.0.0.1 in front of a server: records the start of every request and can
/// cut one connection after it has relayed a number of response bytes (a broken download).
pub struct FaultProxy {
    pub port: u16,
    requests: std::sync::Arc<std::sync::Mutex<String>>,
    cut_after: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stall_after: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stall_upload_after: std::sync::Arc<std::sync::atomic::AtomicU64>,
    upload_rate: std::sync::Arc<std::sync::atomic::AtomicU64>,
    download_rate: std::sync::Arc<std::sync::atomic::AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

/// Waits until `n` bytes may pass a link shared by all connections, at `rate` bytes per second
/// (0: at once); `free` is when the link is next idle.
async fn pace(
    free: &std::sync::Mutex<tokio::time::Instant>,
    rate: &std::sync::atomic::AtomicU64,
    n: usize,
) {
    let per_second = rate.load(std::sync::atomic::Ordering::SeqCst);
    if per_second == 0 {
        return;
    }
    let pass_at = {
        let mut free = free.lock().unwrap();
        let start = (*free).max(tokio::time::Instant::now());
        *free = start + std::time::Duration::from_secs_f64(n as f64 / per_second as f64);
        *free
    };
    tokio::time::sleep_until(pass_at).await;
}

impl FaultProxy {
    pub fn start(upstream_port: u16) -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let cut_after = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stall_after = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stall_upload_after = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (log, cut, stall) = (requests.clone(), cut_after.clone(), stall_after.clone());
        let stall_up = stall_upload_after.clone();
        let upload_rate = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        // One uplink for all connections: the time the next upload byte may pass.
        let uplink_free = std::sync::Arc::new(std::sync::Mutex::new(tokio::time::Instant::now()));
        let rate = upload_rate.clone();
        let download_rate = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let downlink_free = std::sync::Arc::new(std::sync::Mutex::new(tokio::time::Instant::now()));
        let down_rate = download_rate.clone();
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (log, cut, stall) = (log.clone(), cut.clone(), stall.clone());
                let stall_up = stall_up.clone();
                let (rate, uplink_free) = (rate.clone(), uplink_free.clone());
                let (down_rate, downlink_free) = (down_rate.clone(), downlink_free.clone());
                tokio::spawn(async move {
                    let Ok(server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                    else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let upstream = tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut sent = 0u64;
                        while let Ok(n) = client_read.read(&mut buf).await {
                            pace(&uplink_free, &rate, n).await;
                            if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            sent += n as u64;
                            let limit = stall_up.load(Ordering::SeqCst);
                            if limit > 0 && sent >= limit && stall_up.swap(0, Ordering::SeqCst) > 0
                            {
                                // Stop reading from the client: its request body stalls.
                                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                            }
                            let head = String::from_utf8_lossy(&buf[..n.min(2048)]).into_owned();
                            if head.contains("HTTP/1.1") {
                                log.lock().unwrap().push_str(&head);
                            }
                        }
                        let _ = server_write.shutdown().await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut relayed = 0u64;
                    while let Ok(n) = server_read.read(&mut buf).await {
                        pace(&downlink_free, &down_rate, n).await;
                        if n == 0 || client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        relayed += n as u64;
                        let limit = cut.load(Ordering::SeqCst);
                        if limit > 0 && relayed >= limit && cut.swap(0, Ordering::SeqCst) > 0 {
                            break; // drop both halves: the client sees the body end early
                        }
                        let limit = stall.load(Ordering::SeqCst);
                        if limit > 0 && relayed >= limit && stall.swap(0, Ordering::SeqCst) > 0 {
                            // Keep the connection open and silent, like a dead middlebox.
                            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                        }
                    }
                    upstream.abort();
                });
            }
        });
        Self {
            port,
            requests,
            cut_after,
            stall_after,
            stall_upload_after,
            upload_rate,
            download_rate,
            _runtime: runtime,
        }
    }

    /// Limits what all connections together receive from upstream to `bytes_per_second`
    /// (0: no limit): a slow downlink.
    pub fn throttle_downloads(&self, bytes_per_second: u64) {
        self.download_rate
            .store(bytes_per_second, std::sync::atomic::Ordering::SeqCst);
    }

    /// Limits what all connections together send upstream to `bytes_per_second` (0: no limit):
    /// a slow uplink.
    pub fn throttle_uploads(&self, bytes_per_second: u64) {
        self.upload_rate
            .store(bytes_per_second, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops relaying (but keeps open) the next connection that relays more than `bytes`
    /// response bytes, once.
    pub fn stall_once_after(&self, bytes: u64) {
        self.stall_after
            .store(bytes, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops reading requests (the client's upload stalls) on the next connection that sends
    /// more than `bytes`, once.
    pub fn stall_upload_once_after(&self, bytes: u64) {
        self.stall_upload_after
            .store(bytes, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn has_stalled(&self) -> bool {
        self.stall_after.load(std::sync::atomic::Ordering::SeqCst) == 0
    }

    /// Cuts the next connection that relays more than `bytes` response bytes, once.
    pub fn cut_once_after(&self, bytes: u64) {
        self.cut_after
            .store(bytes, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn was_cut(&self) -> bool {
        self.cut_after.load(std::sync::atomic::Ordering::SeqCst) == 0
    }

    pub fn requests(&self) -> String {
        self.requests.lock().unwrap().clone()
    }
}
