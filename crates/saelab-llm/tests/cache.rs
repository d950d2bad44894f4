//! The response cache in front of the OpenAI client and the scripted server: hits make
//! no request (counted by the server and by the cache), a changed request is a miss, a
//! corrupt file is a miss that is rewritten, failures are not cached.

mod common;

use std::time::Duration;

use saelab_llm::{
    CacheStats, CachedClient, ChatClient, ChatMessage, ChatRequest, OpenAiClient, OpenAiConfig,
};

use common::Scripted;

fn client(server: &Scripted, dir: &std::path::Path) -> CachedClient<OpenAiClient> {
    let inner = OpenAiClient::new(OpenAiConfig {
        key_optional: true,
        key_env: "SAELAB_TEST_KEY_UNSET_CACHE".into(),
        timeout: Duration::from_secs(5),
        retries: 0,
        backoff: Duration::from_millis(1),
        ..OpenAiConfig::new(&server.base_url, "m")
    })
    .unwrap();
    CachedClient::new(inner, dir).unwrap()
}

fn ask(text: &str) -> ChatRequest {
    ChatRequest::greedy(vec![ChatMessage::user(text)], 16)
}

#[test]
fn a_second_run_of_a_batch_asks_nothing() {
    let server = Scripted::start();
    let dir = tempfile::tempdir().unwrap();
    let batch = vec![ask("a"), ask("b"), ask("down"), ask("a")];
    let c = client(&server, dir.path());
    let first = c.complete_many(&batch);
    assert_eq!(first[0].as_ref().unwrap().content, "echo: a");
    assert!(first[2].is_err());
    assert_eq!(first[3].as_ref().unwrap(), first[0].as_ref().unwrap());
    // "a" asked once although it appears twice; the repeat counts as a hit.
    assert_eq!(server.seen().len(), 3);
    assert_eq!(
        c.stats(),
        CacheStats {
            requests: 3,
            hits: 1,
            failures: 1,
            write_errors: 0
        }
    );
    // A fresh client on the same directory: the successes come from the files, the
    // failure (not cached) is asked again.
    let c2 = client(&server, dir.path());
    let second = c2.complete_many(&batch);
    assert_eq!(server.seen().len(), 4);
    assert_eq!(server.count("down"), 2);
    assert_eq!(
        c2.stats(),
        CacheStats {
            requests: 1,
            hits: 3,
            failures: 1,
            write_errors: 0
        }
    );
    for (a, b) in first.iter().zip(&second) {
        if let (Ok(a), Ok(b)) = (a, b) {
            assert_eq!(a, b);
        }
    }
    // Only the two successes are on disk.
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files, 2);
    // Without the failure, a third run asks nothing at all.
    let c3 = client(&server, dir.path());
    let before = server.seen().len();
    let third = c3.complete_many(&[ask("b"), ask("a")]);
    assert!(third.iter().all(Result::is_ok));
    assert_eq!(server.seen().len(), before);
    assert_eq!(c3.stats().requests, 0);
    assert_eq!(c3.stats().hits, 2);
}

#[test]
fn a_changed_request_is_a_miss() {
    let server = Scripted::start();
    let dir = tempfile::tempdir().unwrap();
    let c = client(&server, dir.path());
    let base = ask("x");
    c.complete(&base).unwrap();
    let changed = [
        ChatRequest {
            max_tokens: 17,
            ..base.clone()
        },
        ChatRequest {
            temperature: 0.7,
            ..base.clone()
        },
        ChatRequest {
            top_logprobs: Some(2),
            ..base.clone()
        },
        ChatRequest {
            messages: vec![ChatMessage::system("s"), ChatMessage::user("x")],
            ..base.clone()
        },
    ];
    for r in &changed {
        c.complete(r).unwrap();
    }
    c.complete(&base).unwrap();
    assert_eq!(server.seen().len(), 5);
    assert_eq!(c.stats().hits, 1);
    assert_eq!(c.stats().requests, 5);
}

#[test]
fn a_corrupt_cache_file_is_a_miss_and_is_rewritten() {
    let server = Scripted::start();
    let dir = tempfile::tempdir().unwrap();
    let c = client(&server, dir.path());
    let req = ask("y");
    let good = c.complete(&req).unwrap();
    let path = c.path_of(&req);
    let stored = std::fs::read(&path).unwrap();
    for bad in [
        b"".to_vec(),
        b"{\"model_id\": tru".to_vec(),
        stored[..stored.len() / 2].to_vec(),
        // Valid JSON of another request under this key.
        String::from_utf8(stored.clone())
            .unwrap()
            .replace("\"y\"", "\"z\"")
            .into_bytes(),
    ] {
        std::fs::write(&path, &bad).unwrap();
        let before = server.seen().len();
        assert_eq!(c.complete(&req).unwrap(), good);
        assert_eq!(
            server.seen().len(),
            before + 1,
            "a corrupt entry is asked again"
        );
        assert_eq!(std::fs::read(&path).unwrap(), stored, "and rewritten");
    }
    // Now a hit again.
    let before = server.seen().len();
    c.complete(&req).unwrap();
    assert_eq!(server.seen().len(), before);
    // No temporary files are left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn an_unwritable_cache_directory_fails_at_construction() {
    let server = Scripted::start();
    let dir = saelab_testkit::unwritable_dir().join("saelab-llm-cache");
    let inner = OpenAiClient::new(OpenAiConfig {
        key_optional: true,
        key_env: "SAELAB_TEST_KEY_UNSET_CACHE".into(),
        ..OpenAiConfig::new(&server.base_url, "m")
    })
    .unwrap();
    let e = CachedClient::new(inner, &dir).err().unwrap().to_string();
    assert!(e.contains("saelab-llm-cache") && !e.contains('\n'), "{e}");
}
