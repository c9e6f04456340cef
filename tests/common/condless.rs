//! An HTTP proxy in front of the S3 server that behaves like the S3-compatible servers that
//! ignore conditional writes: it strips `If-None-Match` and `If-Match` from every request and
//! signs what is left again (SigV4, with the test server's key), so the server sees a valid,
//! unconditional request. One request per connection (`Connection: close` upstream), which
//! HTTP clients handle by opening the next connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct CondlessProxy {
    pub port: u16,
    stripped: Arc<AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

impl CondlessProxy {
    pub fn start(upstream_port: u16, access_key: &str, secret_key: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let stripped = Arc::new(AtomicU64::new(0));
        let counter = stripped.clone();
        let keys = Arc::new((access_key.to_string(), secret_key.to_string()));
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (counter, keys) = (counter.clone(), keys.clone());
                tokio::spawn(async move {
                    let _ = relay_one(client, upstream_port, &counter, &keys).await;
                });
            }
        });
        Self {
            port,
            stripped,
            _runtime: runtime,
        }
    }

    /// How many conditional headers it has stripped so far.
    pub fn stripped(&self) -> u64 {
        self.stripped.load(Ordering::SeqCst)
    }
}

async fn relay_one(
    mut client: tokio::net::TcpStream,
    upstream_port: u16,
    stripped: &AtomicU64,
    keys: &(String, String),
) -> std::io::Result<()> {
    // The request head.
    let mut buf = Vec::with_capacity(8192);
    let head_len = loop {
        let mut chunk = [0u8; 8192];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    request
        .parse(&buf[..head_len])
        .map_err(std::io::Error::other)?;
    let method = request.method.unwrap_or("GET").to_string();
    let target = request.path.unwrap_or("/").to_string();
    let mut kept: Vec<(String, String)> = Vec::new();
    let mut conditional = false;
    let mut content_length = 0usize;
    for header in request.headers.iter() {
        let name = header.name.to_ascii_lowercase();
        let value = String::from_utf8_lossy(header.value).into_owned();
        match name.as_str() {
            "if-none-match" | "if-match" => conditional = true,
            "authorization" | "x-amz-date" | "connection" => {}
            _ => {
                if name == "content-length" {
                    content_length = value.trim().parse().unwrap_or(0);
                }
                kept.push((name, value));
            }
        }
    }
    let mut body = buf[head_len..].to_vec();
    while body.len() < content_length {
        let mut chunk = vec![0u8; (content_length - body.len()).min(1 << 20)];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    if conditional {
        stripped.fetch_add(1, Ordering::SeqCst);
    }
    // Signed again, without the conditions.
    let payload = kept
        .iter()
        .find(|(n, _)| n == "x-amz-content-sha256")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "UNSIGNED-PAYLOAD".to_string());
    let identity =
        aws_credential_types::Credentials::new(&keys.0, &keys.1, None, None, "test").into();
    let mut settings = aws_sigv4::http_request::SigningSettings::default();
    settings.percent_encoding_mode = aws_sigv4::http_request::PercentEncodingMode::Single;
    settings.uri_path_normalization_mode =
        aws_sigv4::http_request::UriPathNormalizationMode::Disabled;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("s3")
        .time(std::time::SystemTime::now())
        .settings(settings)
        .build()
        .map_err(std::io::Error::other)?
        .into();
    let body_kind = if payload == "UNSIGNED-PAYLOAD" {
        aws_sigv4::http_request::SignableBody::UnsignedPayload
    } else {
        aws_sigv4::http_request::SignableBody::Precomputed(payload)
    };
    let signable = aws_sigv4::http_request::SignableRequest::new(
        &method,
        target.as_str(),
        kept.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        body_kind,
    )
    .map_err(std::io::Error::other)?;
    let (instructions, _) = aws_sigv4::http_request::sign(signable, &params)
        .map_err(std::io::Error::other)?
        .into_parts();
    let (signing_headers, _) = instructions.into_parts();
    let mut out = format!("{method} {target} HTTP/1.1\r\n");
    for (name, value) in &kept {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    for header in &signing_headers {
        out.push_str(&format!("{}: {}\r\n", header.name(), header.value()));
    }
    out.push_str("connection: close\r\n\r\n");
    let mut upstream = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await?;
    upstream.write_all(out.as_bytes()).await?;
    upstream.write_all(&body).await?;
    // The response, until the server closes.
    tokio::io::copy(&mut upstream, &mut client).await?;
    client.shutdown().await?;
    Ok(())
}
