//! Store URLs to `object_store` clients.
//!
//! `s3://bucket/prefix` (credentials and region from aws-config's default chain: env vars,
//! profiles, SSO, web identity, ECS, instance metadata — cached until shortly before they
//! expire), `az://container/prefix` (`AZURE_*` variables), `gs://bucket/prefix`
//! (`GOOGLE_*` variables) and `file:///path`. Every client gets timeouts that suit long
//! streaming transfers: no total request timeout, a read timeout instead, and retries.
//!
//! Where it sits: An adapter: sees `format` and the upload settings of `pipeline`; `manifest`,
//! `lock` and the operations build on it.

use crate::format::{MANIFEST_NAME, SIGNATURE_NAME};
use crate::pipeline::upload::PartPolicy;
use anyhow::{Context, Result};
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, AwsCredential};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, CredentialProvider, ObjectStore,
    RetryConfig,
};
use serde::Deserialize;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// An opened store: the client, where lifeboat's objects live in it, and how to upload.
#[derive(Clone)]
pub struct Store {
    pub objects: Arc<dyn ObjectStore>,
    pub layout: Layout,
    /// Attributes every volume object is uploaded with (S3 storage class).
    pub upload_attributes: Attributes,
    /// The URL as given, for messages.
    pub url: String,
    /// How volume objects are uploaded to it (its part sizes and limits).
    pub parts: PartPolicy,
}

/// Opens the store the options name.
pub async fn open(options: &StoreOptions) -> Result<Store> {
    let url = options.url_or_default();
    let (objects, prefix) = open_url(&url, options).await?;
    let mut upload_attributes = Attributes::new();
    if let Some(class) = &options.storage_class {
        if !url.starts_with("s3") {
            return Err(crate::error::usage(
                "--storage-class applies to s3:// stores only",
            ));
        }
        upload_attributes.insert(Attribute::StorageClass, class.clone().into());
    }
    Ok(Store {
        objects,
        layout: Layout { prefix },
        url,
        upload_attributes,
        // Checked where something is uploaded (backup, copy); reading commands do not care.
        parts: options.part_policy().unwrap_or_default(),
    })
}

async fn open_url(url: &str, options: &StoreOptions) -> Result<(Arc<dyn ObjectStore>, Path)> {
    let bad = |why: &str| {
        crate::error::usage(format!(
            "store URL '{url}' {why}; use s3://bucket/prefix, az://container/prefix, gs://bucket/prefix or file:///absolute/path"
        ))
    };
    if url.starts_with('/') {
        return local(std::path::Path::new(url));
    }
    let parsed = url::Url::parse(url).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    let prefix = Path::parse(parsed.path().trim_matches('/')).map_err(|e| {
        bad(&format!(
            "has a prefix that is not a valid object path ({e})"
        ))
    })?;
    let bucket = parsed.host_str().unwrap_or_default().to_string();
    match parsed.scheme() {
        "file" => {
            if !bucket.is_empty() {
                return Err(bad("names a host; a local folder is file:///absolute/path"));
            }
            local(std::path::Path::new(parsed.path()))
        }
        "s3" | "s3a" => {
            if bucket.is_empty() {
                return Err(bad("has no bucket"));
            }
            Ok((s3(&bucket, options).await?, prefix))
        }
        "az" | "azure" | "abfs" => {
            if bucket.is_empty() {
                return Err(bad("has no container"));
            }
            let mut builder = MicrosoftAzureBuilder::from_env();
            if let Ok(connection) = std::env::var("AZURE_STORAGE_CONNECTION_STRING") {
                builder = apply_connection_string(builder, &connection)?;
            }
            let store = builder
                .with_container_name(&bucket)
                .with_client_options(client_options(options))
                .with_retry(retry_config())
                .build()
                .map_err(|e| crate::error::usage(format!("Azure store {url}: {e}")))?;
            Ok((Arc::new(store), prefix))
        }
        "gs" | "gcs" => {
            if bucket.is_empty() {
                return Err(bad("has no bucket"));
            }
            let store = GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(&bucket)
                .with_client_options(client_options(options))
                .with_retry(retry_config())
                .build()
                .map_err(|e| crate::error::usage(format!("GCS store {url}: {e}")))?;
            Ok((Arc::new(store), prefix))
        }
        other => Err(bad(&format!("has an unknown scheme '{other}'"))),
    }
}

/// Applies an Azure Storage connection string (`AccountName=…;AccountKey=…`, or
/// `BlobEndpoint=…;SharedAccessSignature=…`, as the Azure portal shows them).
fn apply_connection_string(
    mut builder: MicrosoftAzureBuilder,
    connection: &str,
) -> Result<MicrosoftAzureBuilder> {
    use object_store::azure::AzureConfigKey;
    let mut known = false;
    for part in connection
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (key, value) = part.split_once('=').ok_or_else(|| {
            crate::error::usage(
                "AZURE_STORAGE_CONNECTION_STRING is not a list of Key=Value pairs separated by ';'",
            )
        })?;
        builder = match key {
            "AccountName" => builder.with_account(value),
            "AccountKey" => builder.with_access_key(value),
            "SharedAccessSignature" => builder.with_config(AzureConfigKey::SasKey, value),
            "BlobEndpoint" => builder
                .with_endpoint(value.to_string())
                .with_allow_http(value.starts_with("http://")),
            "UseDevelopmentStorage" if value == "true" => builder.with_use_emulator(true),
            "DefaultEndpointsProtocol"
            | "EndpointSuffix"
            | "QueueEndpoint"
            | "TableEndpoint"
            | "FileEndpoint" => builder,
            other => {
                return Err(crate::error::usage(format!(
                    "AZURE_STORAGE_CONNECTION_STRING has an unknown key '{other}'"
                )));
            }
        };
        known = true;
    }
    if !known {
        return Err(crate::error::usage(
            "AZURE_STORAGE_CONNECTION_STRING is empty",
        ));
    }
    Ok(builder)
}

fn local(dir: &std::path::Path) -> Result<(Arc<dyn ObjectStore>, Path)> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the backup folder {}", dir.display()))?;
    let store = LocalFileSystem::new_with_prefix(dir)
        .with_context(|| format!("cannot use {} as a store", dir.display()))?;
    Ok((Arc::new(store), Path::default()))
}

/// Streaming-friendly HTTP settings: a body may take hours, a silent connection may not.
fn client_options(options: &StoreOptions) -> ClientOptions {
    ClientOptions::new()
        .with_timeout_disabled()
        .with_connect_timeout(Duration::from_secs(10))
        .with_read_timeout(Duration::from_secs(
            options.io_timeout.unwrap_or(120).max(1),
        ))
}

/// Six retries, each waiting a random time between a second and twice the last wait (at most
/// 15 s): at least 6 s and at most 45 s in all, so a store that restarts or fails over for a few
/// seconds is ridden through. A refused connection fails at once, so a floor of 200 ms let six
/// retries pass in 1.4 s.
fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        },
        max_retries: 6,
        retry_timeout: Duration::from_secs(300),
    }
}

async fn s3(bucket: &str, options: &StoreOptions) -> Result<Arc<dyn ObjectStore>> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(profile) = &options.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(region) = &options.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    let sdk = loader.load().await;
    let region = sdk
        .region()
        .map_or_else(|| "us-east-1".to_string(), |r| r.to_string());
    let endpoint = options
        .endpoint
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
        .or_else(|| sdk.endpoint_url().map(str::to_string));
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(region)
        .with_virtual_hosted_style_request(options.virtual_hosted_style)
        .with_client_options(client_options(options))
        .with_retry(retry_config());
    if let Some(endpoint) = endpoint {
        builder = builder
            .with_allow_http(endpoint.starts_with("http://"))
            .with_endpoint(endpoint);
    }
    match (options.sse.as_deref(), &options.sse_kms_key_id) {
        (None, None) => {}
        (Some("AES256"), None) => builder = builder.with_config(sse_key(), "AES256"),
        (Some("aws:kms") | None, key) => {
            builder = builder.with_config(sse_key(), "aws:kms");
            if let Some(key) = key {
                builder = builder.with_sse_kms_encryption(key);
            }
        }
        (Some("aws:kms:dsse"), key) => {
            builder = builder.with_config(sse_key(), "aws:kms:dsse");
            if let Some(key) = key {
                builder = builder.with_dsse_kms_encryption(key);
            }
        }
        (Some(other), _) => {
            return Err(crate::error::usage(format!(
                "--sse '{other}' is not AES256, aws:kms or aws:kms:dsse (a KMS key needs aws:kms)"
            )));
        }
    }
    if let Some(provider) = sdk.credentials_provider() {
        builder = builder.with_credentials(Arc::new(AwsChainCredentials::new(provider)));
    }
    let store = builder
        .build()
        .map_err(|e| crate::error::usage(format!("S3 bucket '{bucket}': {e}")))?;
    Ok(Arc::new(store))
}

/// The builder key of S3 server-side encryption (`aws_server_side_encryption`).
fn sse_key() -> AmazonS3ConfigKey {
    AmazonS3ConfigKey::from_str("aws_server_side_encryption")
        .expect("a documented object_store key")
}

/// aws-config's credential chain as an object_store credential provider, cached until five
/// minutes before the credentials expire (the chain itself does not cache).
#[derive(Debug)]
pub struct AwsChainCredentials {
    provider: SharedCredentialsProvider,
    cached: tokio::sync::Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
}

impl AwsChainCredentials {
    pub fn new(provider: SharedCredentialsProvider) -> Self {
        Self {
            provider,
            cached: tokio::sync::Mutex::new(None),
        }
    }
}

const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);

#[async_trait::async_trait]
impl CredentialProvider for AwsChainCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cached = self.cached.lock().await;
        if let Some((credential, expiry)) = cached.as_ref() {
            let fresh = expiry.is_none_or(|e| e > SystemTime::now() + REFRESH_BEFORE_EXPIRY);
            if fresh {
                return Ok(Arc::clone(credential));
            }
        }
        let credentials = self.provider.provide_credentials().await.map_err(|e| {
            object_store::Error::Generic {
                store: "S3",
                source: format!(
                    "no AWS credentials: {}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE/--profile for a profile in ~/.aws",
                    error_chain(&e)
                )
                .into(),
            }
        })?;
        let credential = Arc::new(AwsCredential {
            key_id: credentials.access_key_id().to_string(),
            secret_key: credentials.secret_access_key().to_string(),
            token: credentials.session_token().map(str::to_string),
        });
        *cached = Some((Arc::clone(&credential), credentials.expiry()));
        Ok(credential)
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A URL, or a list of them (`url = ["file:///backups", "s3://offsite/app"]`).
fn one_or_many<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(Some(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(url) => vec![url],
        OneOrMany::Many(urls) => urls,
    }))
}

/// Where backups are stored.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreOptions {
    /// Store URL: s3://bucket/prefix, az://container/prefix, gs://bucket/prefix or
    /// file:///path [default: a local folder, ~/.local/share/lifeboat/backups]. `backup` takes
    /// it more than once and writes every store in one run; the other commands use the first
    #[arg(long = "store", visible_aliases = ["to", "from"], env = "LIFEBOAT_STORE", value_name = "URL")]
    #[serde(deserialize_with = "one_or_many")]
    pub url: Option<Vec<String>>,
    /// S3: endpoint of an S3-compatible server [default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or the profile's]
    #[arg(long, env = "LIFEBOAT_S3_ENDPOINT", value_name = "URL")]
    pub endpoint: Option<String>,
    /// S3: region [default: from the AWS configuration chain, else us-east-1]
    #[arg(long, env = "LIFEBOAT_S3_REGION")]
    pub region: Option<String>,
    /// S3: the AWS profile to take credentials and region from [default: AWS_PROFILE]
    #[arg(long, env = "LIFEBOAT_AWS_PROFILE")]
    pub profile: Option<String>,
    /// S3: virtual-hosted-style requests instead of path-style
    #[arg(long, env = "LIFEBOAT_S3_VIRTUAL_HOSTED")]
    pub virtual_hosted_style: bool,
    /// S3: storage class of the volume objects (STANDARD_IA, GLACIER_IR, …) [default: the bucket's]
    #[arg(long, env = "LIFEBOAT_S3_STORAGE_CLASS", value_name = "CLASS")]
    pub storage_class: Option<String>,
    /// S3: server-side encryption: AES256 (SSE-S3), aws:kms (SSE-KMS) or aws:kms:dsse
    #[arg(long, env = "LIFEBOAT_S3_SSE", value_name = "KIND")]
    pub sse: Option<String>,
    /// S3: the KMS key for aws:kms / aws:kms:dsse [default: the bucket's]
    #[arg(long, env = "LIFEBOAT_S3_SSE_KMS_KEY_ID", value_name = "KEY")]
    pub sse_kms_key_id: Option<String>,
    /// Seconds a connection to the store may stay silent before the request is retried (a
    /// download resumes where it stopped); an upload part must also move 8 MiB per this many
    /// seconds or the upload is aborted [default: 120]
    #[arg(long, env = "LIFEBOAT_IO_TIMEOUT", value_name = "SECONDS")]
    pub io_timeout: Option<u64>,
    /// Size of the upload parts in MiB; a volume of more parts than the store allows per
    /// object goes on in another object (a segment) [default: 8]
    #[arg(long, env = "LIFEBOAT_PART_SIZE_MIB", value_name = "MIB")]
    pub part_size_mib: Option<usize>,
    /// The store's limit on parts per object [default: 10000; some S3-compatibles: 1000]
    #[arg(long, env = "LIFEBOAT_MAX_PARTS")]
    pub max_parts: Option<usize>,
    /// Upload parts in flight at once; memory is about this × the part size [default: 4]
    #[arg(long, env = "LIFEBOAT_PARTS_IN_FLIGHT")]
    pub parts_in_flight: Option<usize>,
}
impl StoreOptions {
    pub fn part_policy(&self) -> Result<PartPolicy> {
        let default = PartPolicy::default();
        let policy = PartPolicy {
            part_size: self.part_size_mib.map_or(default.part_size, |m| m << 20),
            max_parts: self.max_parts.unwrap_or(default.max_parts),
            parts_in_flight: self.parts_in_flight.unwrap_or(default.parts_in_flight),
            stall_timeout: self.io_timeout.map_or(default.stall_timeout, |s| {
                std::time::Duration::from_secs(s.max(1))
            }),
        };
        if policy.part_size == 0 || policy.max_parts == 0 || policy.parts_in_flight == 0 {
            return Err(crate::error::usage(
                "part_size_mib, max_parts and parts_in_flight must be at least 1",
            ));
        }
        Ok(policy)
    }

    /// The same settings for one URL.
    pub fn with_url(&self, url: &str) -> StoreOptions {
        StoreOptions {
            url: Some(vec![url.to_string()]),
            ..self.clone()
        }
    }

    /// The URLs given, none when none is.
    pub fn urls(&self) -> &[String] {
        self.url.as_deref().unwrap_or_default()
    }

    /// The store URL (the first, when several are given), or the local-folder default.
    pub fn url_or_default(&self) -> String {
        self.urls().first().cloned().unwrap_or_else(|| {
            let base = std::env::var_os("XDG_DATA_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
                .unwrap_or_else(|| PathBuf::from("/var/lib"));
            format!("file://{}", base.join("lifeboat/backups").display())
        })
    }
}

/// Where the backups of one app live in a store.
#[derive(Debug, Clone)]
pub struct Layout {
    pub prefix: Path,
}

impl Layout {
    pub fn app_dir(&self, app: &str) -> Path {
        self.prefix.clone().join(app)
    }

    pub fn backup_dir(&self, app: &str, backup_id: &str) -> Path {
        self.app_dir(app).join(backup_id)
    }

    pub fn manifest(&self, app: &str, backup_id: &str) -> Path {
        self.backup_dir(app, backup_id).join(MANIFEST_NAME)
    }

    pub fn signature(&self, app: &str, backup_id: &str) -> Path {
        self.backup_dir(app, backup_id).join(SIGNATURE_NAME)
    }

    pub fn object(&self, app: &str, backup_id: &str, object: &str) -> Path {
        self.backup_dir(app, backup_id).join(object)
    }

    /// The app and backup id of a manifest's key, if it lies where manifests lie.
    pub fn ids_of(&self, key: &Path) -> Option<(String, String)> {
        let mut parts = key.prefix_match(&self.prefix)?;
        let app = parts.next()?.as_ref().to_string();
        let id = parts.next()?.as_ref().to_string();
        (parts.next()?.as_ref() == MANIFEST_NAME && parts.next().is_none()).then_some((app, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug)]
    struct Counting {
        calls: Arc<AtomicUsize>,
        expiry: Option<SystemTime>,
    }

    impl ProvideCredentials for Counting {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            self.calls.fetch_add(1, Ordering::SeqCst);
            aws_credential_types::provider::future::ProvideCredentials::ready(Ok(Credentials::new(
                "AKID",
                "SECRET",
                None,
                self.expiry,
                "test",
            )))
        }
    }

    #[tokio::test]
    async fn credentials_are_cached_until_near_expiry() {
        for (expiry, expected_calls) in [
            (None, 1),
            (Some(SystemTime::now() + Duration::from_secs(3600)), 1),
            (Some(SystemTime::now() + Duration::from_secs(60)), 3),
        ] {
            let calls = Arc::new(AtomicUsize::new(0));
            let provider = AwsChainCredentials::new(SharedCredentialsProvider::new(Counting {
                calls: Arc::clone(&calls),
                expiry,
            }));
            for _ in 0..3 {
                assert_eq!(provider.get_credential().await.unwrap().key_id, "AKID");
            }
            assert_eq!(calls.load(Ordering::SeqCst), expected_calls, "{expiry:?}");
        }
    }

    #[test]
    fn azure_connection_strings_are_read() {
        let builder = MicrosoftAzureBuilder::new().with_container_name("c");
        let with_key = apply_connection_string(
            builder,
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net",
        )
        .unwrap();
        assert!(with_key.build().is_ok());
        let sas = apply_connection_string(
            MicrosoftAzureBuilder::new().with_container_name("c"),
            "BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=sv=2021-08-06&sig=abc",
        )
        .unwrap();
        assert!(sas.with_account("acct").build().is_ok());
        for bad in ["", "nonsense", "AccountName=a;Bogus=1"] {
            assert!(
                apply_connection_string(MicrosoftAzureBuilder::new(), bad).is_err(),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn urls_are_checked() {
        let options = StoreOptions::default();
        for (url, needle) in [
            ("ftp://x/y", "unknown scheme"),
            ("s3:///prefix", "no bucket"),
            ("not a url", "not a URL"),
            ("file://host/path", "names a host"),
        ] {
            let err = open_url(url, &options).await.err().unwrap().to_string();
            assert!(err.contains(needle), "{url}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/nested", dir.path().display());
        let (_, prefix) = open_url(&url, &options).await.unwrap();
        assert!(prefix.as_ref().is_empty());
        assert!(dir.path().join("nested").is_dir());
    }
}
