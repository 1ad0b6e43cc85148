//! The connector against its simulator over HTTP: the SDK's conformance checks, a read
//! through every fault the kit injects, and the hostile answers it must refuse.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tributary_sdk::conformance::{self, Harness, assert_protocol, read_all, read_until_error};
use tributary_sdk::{Error, ReadRequest, Source, SourceContext, StreamSchema};

use crate::sandbox::{AcmeFaults, AcmeSandbox, Faults, SandboxConfig};

async fn sandbox(records: usize) -> AcmeSandbox {
    let config = SandboxConfig {
        records,
        ..SandboxConfig::default()
    };
    AcmeSandbox::start(config, 0)
        .await
        .expect("the simulator starts")
}

fn source(sandbox: &AcmeSandbox, api_key: &str, page_size: u32) -> Arc<dyn Source> {
    let options = serde_json::json!({
        "api_key": api_key,
        "api_base": sandbox.url(),
        "requests_per_second": 1000,
        "page_size": page_size,
    });
    crate::factory()
        .build(options, SourceContext::default())
        .expect("the source builds")
}

async fn items_schema(source: &dyn Source) -> StreamSchema {
    source.discover().await.unwrap().remove(0)
}

struct Acme {
    sandbox: AcmeSandbox,
}

#[async_trait]
impl Harness for Acme {
    fn source(&self) -> Arc<dyn Source> {
        source(&self.sandbox, AcmeSandbox::API_KEY, 7)
    }
    async fn ids(&self, _stream: &str) -> Vec<String> {
        self.sandbox.ids()
    }
    async fn create(&self, _stream: &str) -> String {
        self.sandbox.create("Created by the conformance kit")
    }
    async fn update(&self, _stream: &str, id: &str) {
        assert!(self.sandbox.update(id, "quantity", serde_json::json!(42)));
    }
    async fn delete(&self, _stream: &str, id: &str) {
        assert!(self.sandbox.delete(id));
    }
    /// Reads stop before Acme's current second: move its clock past the changes.
    async fn settle(&self) {
        self.sandbox.kit().clock.advance(Duration::from_secs(2));
    }
}

#[tokio::test]
async fn passes_the_conformance_kit() {
    let harness = Acme {
        sandbox: sandbox(60).await,
    };
    if let Err(e) = conformance::run(&harness, "items").await {
        panic!("conformance: {e}");
    }
}

#[tokio::test]
async fn reads_every_item_once_through_errors_throttling_and_broken_bodies() {
    let sandbox = sandbox(300).await;
    sandbox.kit().set_faults(Faults {
        error_rate: 0.15,
        throttle_rate: 0.1,
        truncate_rate: 0.1,
        malformed_rate: 0.1,
        ..Faults::default()
    });
    let source = source(&sandbox, AcmeSandbox::API_KEY, 25);
    let schema = items_schema(source.as_ref()).await;
    let log = read_all(source.as_ref(), &schema, None, false)
        .await
        .unwrap();
    assert!(log.duplicates().is_empty(), "{:?}", log.duplicates());
    assert_eq!(log.ids(), sandbox.ids().into_iter().collect());
    assert!(sandbox.kit().counters().faults_injected > 0);
}

#[tokio::test]
async fn refuses_a_repeated_page_token_and_a_page_without_has_more() {
    let sandbox = sandbox(100).await;
    let source = source(&sandbox, AcmeSandbox::API_KEY, 10);
    let schema = items_schema(source.as_ref()).await;
    let request = || ReadRequest {
        schema: schema.clone(),
        cursor: None,
        full_refresh: false,
    };

    sandbox.kit().set_faults(Faults {
        repeat_cursor: true,
        ..Faults::default()
    });
    let (pages, err) = read_until_error(source.as_ref(), request()).await;
    assert_protocol(&err, "Acme", "items", "repeated");
    // Only the first page landed: the second led back to its own token, so it repeats
    // what was delivered and must not commit.
    assert_eq!(pages.len(), 1);

    sandbox.kit().set_faults(Faults {
        bad_shape_after: 1,
        ..AcmeFaults { bad_shape: true }.into()
    });
    let (pages, err) = read_until_error(source.as_ref(), request()).await;
    assert_protocol(&err, "Acme", "items", "has_more");
    assert_eq!(pages.len(), 1);
}

#[tokio::test]
async fn a_wrong_key_is_an_auth_error_that_does_not_print_it() {
    let sandbox = sandbox(10).await;
    let source = source(&sandbox, "acme_wrong_key_123", 10);
    let err = source.check().await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(!err.to_string().contains("acme_wrong_key_123"), "{err}");
}
