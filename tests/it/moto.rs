//! A real S3-compatible server for the object-store tests: moto (installed by
//! scripts/test.sh), one per test on a free port of 127.0.0.1, stopped on drop. Also the
//! `[warehouse]` section that points a test's config at it, and boto3's count of the
//! stored versions of objects (see [`crate::stores`] for the other readers).

use std::collections::HashMap;

use crate::common::{py, python};
use crate::stores::Server;

/// A moto server on a free port, stopped on drop.
pub struct Moto {
    _server: Server,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl Moto {
    /// Starts moto and waits until it accepts connections.
    pub async fn start() -> Moto {
        let port = Server::free_port();
        let bin = std::path::Path::new(&python()).with_file_name("moto_server");
        let args = [
            "-H".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            port.to_string(),
        ];
        let server = Server::start(&bin, &args, port).await;
        Moto {
            endpoint: server.endpoint.clone(),
            _server: server,
        }
    }

    /// Creates `bucket`; with `versioned`, every overwrite of a key keeps the older version,
    /// so a test can prove that no object was written twice.
    pub async fn create_bucket(&self, bucket: &str, versioned: bool) {
        py(
            r#"
import boto3, sys
s3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='test',
                  aws_secret_access_key='test', region_name='us-east-1')
s3.create_bucket(Bucket=sys.argv[2])
if sys.argv[3] == 'yes':
    s3.put_bucket_versioning(Bucket=sys.argv[2], VersioningConfiguration={'Status': 'Enabled'})
"#,
            &[&self.endpoint, bucket, if versioned { "yes" } else { "no" }],
        )
        .await;
    }
}

/// The `[warehouse]` section for `url` (`s3://bucket/prefix`) on the S3-compatible server at
/// `endpoint` (moto, or a proxy in front of it), with conditional puts for commits, and
/// `extra` lines appended to `[warehouse.options]`.
pub fn s3_warehouse(endpoint: &str, url: &str, extra: &str) -> String {
    format!(
        "url = {url:?}\n[warehouse.options]\naws_endpoint = \"{endpoint}\"\naws_region = \"us-east-1\"\naws_access_key_id = \"test\"\naws_secret_access_key = \"${{TRIBUTARY_TEST_S3_SECRET:-test}}\"\naws_allow_http = \"true\"\naws_conditional_put = \"etag\"\n{extra}"
    )
}

/// How many versions of each key under `prefix` the bucket `lake` stores, read with boto3
/// (more than one: the key was overwritten; only a versioned bucket keeps them).
pub async fn object_versions(endpoint: &str, prefix: &str) -> HashMap<String, usize> {
    let out = py(
        r#"
import boto3, json, sys
s3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='test',
                  aws_secret_access_key='test', region_name='us-east-1')
versions = {}
for page in s3.get_paginator('list_object_versions').paginate(Bucket='lake', Prefix=sys.argv[2]):
    for v in page.get('Versions', []):
        versions[v['Key']] = versions.get(v['Key'], 0) + 1
print(json.dumps(versions))
"#,
        &[endpoint, prefix],
    )
    .await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("boto3 output {out:?}: {e}"))
}
