//! A user's config mistakes: each is an error that names the file and the key, exits
//! non-zero, and writes nothing.

use crate::common::run_binary;

async fn fails_with(config: &str, args: &[&str], expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let config = config.replace("WAREHOUSE", &dir.path().join("wh").display().to_string());
    std::fs::write(&path, config).unwrap();
    let out = run_binary(&path, args).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    for e in expected {
        assert!(stderr.contains(e), "expected {e:?} in: {stderr}");
    }
    assert!(
        !dir.path().join("wh").join("stripe").exists(),
        "nothing may be written: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn config_errors_name_the_key_and_the_file() {
    let base = "[warehouse]\nurl = \"WAREHOUSE\"\n";
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            format!(
                "{base}[sources.stripe]\ntype = \"stripe\"\napi_key = \"sk_test_x\"\napi_kye = \"oops\"\n"
            ),
            vec!["bad.toml", "api_kye"],
        ),
        (
            format!(
                "{base}[sources.stripe]\ntype = \"stripe\"\napi_key = \"sk_test_x\"\nschedule = \"every day\"\n"
            ),
            vec!["bad.toml", "sources.stripe.schedule"],
        ),
        (
            format!(
                "{base}[sources.stripe]\ntype = \"stripe\"\napi_key = \"${{TRIBUTARY_TEST_UNSET_KEY}}\"\n"
            ),
            vec![
                "bad.toml",
                "sources.stripe.api_key",
                "TRIBUTARY_TEST_UNSET_KEY",
            ],
        ),
        (
            format!(
                "{base}[sources.stripe]\ntype = \"stripe\"\napi_key = \"sk_test_x\"\nstreams = [\"charges\", \"chargez\"]\n"
            ),
            vec!["bad.toml", "sources.stripe.streams[1]", "available"],
        ),
        (
            format!(
                "{base}merge = \"fast\"\n[sources.stripe]\ntype = \"stripe\"\napi_key = \"sk_test_x\"\n"
            ),
            vec![
                "bad.toml",
                "warehouse.merge",
                "deletion-vectors",
                "copy-on-write",
            ],
        ),
        (
            format!(
                "{base}[sources.stripe]\ntype = \"stripe\"\napi_key = \"sk_test_x\"\nhistory = \"yes\"\n"
            ),
            vec!["bad.toml", "sources.stripe.history", "true or false"],
        ),
        (
            format!("{base}[sources.stripe]\ntype = \"strype\"\napi_key = \"sk_test_x\"\n"),
            vec!["bad.toml", "sources.stripe.type", "stripe"],
        ),
        (
            format!("{base}[sources.stripe]\ntype = \"stripe\"\napi_key = \"pk_test_x\"\n"),
            vec!["bad.toml", "sources.stripe.api_key"],
        ),
        (
            format!(
                "{base}colour = \"blue\"\n[sources.stripe]\ntype = \"stripe\"\napi_key = \"sk_test_x\"\n"
            ),
            vec!["bad.toml", "colour"],
        ),
        (
            format!(
                "{base}[sources.stripe]\ntype = \"stripe\"\napi_key = \"sk_test_x\"\n[sources.stripe.tracking]\nwrite_key = \"wk\"\nendpiont = \"http://x\"\n"
            ),
            vec!["bad.toml", "sources.stripe.tracking.endpiont"],
        ),
        (
            format!(
                "{base}[sources.stripe]\ntype = \"stripe\"\napi_key = \"sk_test_x\"\n[sources.stripe.tracking]\nwrite_key = \"${{TRIBUTARY_TEST_UNSET_KEY}}\"\n"
            ),
            vec![
                "bad.toml",
                "sources.stripe.tracking.write_key",
                "TRIBUTARY_TEST_UNSET_KEY",
            ],
        ),
    ];
    for (config, expected) in cases {
        fails_with(&config, &["sync"], &expected).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_config_file_says_how_to_make_one() {
    let out = run_binary(
        std::path::Path::new("/nonexistent/tributary.toml"),
        &["sync"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/tributary.toml"), "{stderr}");
    assert!(stderr.contains("config.example.toml"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_credentials_fail_check_and_sync_without_writing() {
    let env = crate::common::Env::stripe(10, "").await;
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(
            tributary_stripe::sandbox::StripeSandbox::api_key(),
            "sk_live_wrong",
        )
        .replace("requests_per_second = 500\n", "");
    std::fs::write(&env.config, text).unwrap();
    let out = env.run(&["check"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("401") && stdout.contains("Invalid API Key"),
        "{stdout}"
    );
    let out = env.run(&["sync", "--stream", "charges"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("failed") && stdout.contains("401"),
        "{stdout}"
    );
    // The table may exist (created empty) but holds no rows and no cursor.
    assert!(
        crate::common::read_table(&env.table("charges"))
            .await
            .is_empty()
    );
}

/// What a `${ENV}` reference may carry into any option by mistake.
const SECRET: &str = "sk_live_TOPSECRET-4242-never-printed";

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_in_the_wrong_option_is_never_printed() {
    let base = "[warehouse]\nurl = \"WAREHOUSE\"\n";
    let stripe = "[sources.stripe]\ntype = \"stripe\"\napi_key = \"sk_test_x\"\n";
    let salesforce =
        "[sources.sf]\ntype = \"salesforce\"\nclient_id = \"c\"\nrefresh_token = \"r\"\n";
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            format!("{base}{stripe}page_size = \"${{TRIBUTARY_TEST_SECRET}}\"\n"),
            vec![
                "invalid option `sources.stripe.page_size`",
                "expected an integer",
                "found text",
            ],
        ),
        (
            format!("{base}{stripe}requests_per_second = [\"${{TRIBUTARY_TEST_SECRET}}\"]\n"),
            vec![
                "`sources.stripe.requests_per_second`",
                "expected a number, found a list",
            ],
        ),
        (
            format!("{base}{stripe}api_base = \"${{TRIBUTARY_TEST_SECRET}}\"\n"),
            vec!["`sources.stripe.api_base`", "not a URL"],
        ),
        (
            format!(
                "{base}{stripe}[sources.stripe.tracking]\nwrite_key = \"wk_123456\"\nendpoint = \"${{TRIBUTARY_TEST_SECRET}}\"\n"
            ),
            vec!["`sources.stripe.tracking.endpoint`", "not a URL"],
        ),
        (
            format!(
                "{base}{salesforce}[sources.sf.fields.Account]\ninclude = \"${{TRIBUTARY_TEST_SECRET}}\"\n"
            ),
            vec![
                "`sources.sf.fields.Account.include`",
                "expected a list, found text",
            ],
        ),
        (
            format!("{base}{salesforce}objects = [\"Account\", \"${{TRIBUTARY_TEST_SECRET}}\"]\n"),
            vec!["`sources.sf.objects[1]`", "not an object API name"],
        ),
        (
            format!("{base}{salesforce}login_url = \"${{TRIBUTARY_TEST_SECRET}}\"\n"),
            vec!["`sources.sf.login_url`"],
        ),
        (
            format!("{base}[sync]\nbatch_size = \"{SECRET}\"\n{stripe}"),
            vec!["`sync.batch_size`", "found text"],
        ),
        (
            format!("{base}[sync]\nbatch_size = \"{SECRET}\n{stripe}"),
            vec!["bad.toml:4:"],
        ),
    ];
    for (config, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        let config = config.replace("WAREHOUSE", &dir.path().join("wh").display().to_string());
        std::fs::write(&path, &config).unwrap();
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(["sync", "--config"])
            .arg(&path)
            .env("TRIBUTARY_TEST_SECRET", SECRET)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{config}\n{stderr}");
        for e in &expected {
            assert!(stderr.contains(e), "expected {e:?} in: {stderr}");
        }
        assert!(
            !stderr.contains("TOPSECRET") && !stdout.contains("TOPSECRET"),
            "the value leaked:\n{stdout}\n{stderr}"
        );
        assert!(
            !dir.path().join("wh").exists(),
            "nothing may be written: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_range_numbers_name_the_key_and_the_range_and_write_nothing() {
    let base = "[warehouse]\nurl = \"WAREHOUSE\"\n";
    let stripe = "[sources.stripe]\ntype = \"stripe\"\napi_key = \"sk_test_x\"\n";
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            format!("{base}[sync]\nbatch_size = 5000000\n{stripe}"),
            vec!["`sync.batch_size`", "between 1 and 1048576"],
        ),
        (
            format!("{base}[sync]\nconcurrency = 1000\n{stripe}"),
            vec!["`sync.concurrency`", "between 1 and 64"],
        ),
        (
            format!("{base}[sync]\ncommit_every = 0\n{stripe}"),
            vec!["`sync.commit_every`", "between 1 and 100000000"],
        ),
        (
            format!("{base}{stripe}page_size = 4321\n"),
            vec!["`sources.stripe.page_size`", "between 1 and 100"],
        ),
        (
            format!("{base}{stripe}requests_per_second = 50000\n"),
            vec![
                "`sources.stripe.requests_per_second`",
                "between 0.1 and 10000",
            ],
        ),
        (
            format!(
                "{base}[sources.sf]\ntype = \"salesforce\"\nclient_id = \"c\"\nrefresh_token = \"r\"\napi_budget_percent = 0\n"
            ),
            vec!["`sources.sf.api_budget_percent`", "between 1 and 100"],
        ),
    ];
    for (config, expected) in cases {
        fails_with(&config, &["sync"], &expected).await;
    }
}
