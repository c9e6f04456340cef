//! Store URLs to `object_store` clients.
//!
//! `s3://bucket/prefix` (credentials and region from aws-config's default chain: env vars,
//! profiles, SSO, web identity, ECS, instance metadata — cached until shortly before they
//! expire), `az://container/prefix` (`AZURE_*` variables), `gs://bucket/prefix`
//! (`GOOGLE_*` variables) and `file:///path`. Every client gets timeouts that suit long
//! streaming transfers: no total request timeout, a read timeout instead, and retries.

use crate::config::StoreOptions;
use crate::manifest::Layout;
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

fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(200),
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
