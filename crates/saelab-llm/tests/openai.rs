//! The OpenAI-compatible client against a scripted server (`common/mod.rs`): the exact
//! request it sends, and each failure as a value that leaves the rest of a batch alone.

mod common;

use std::time::{Duration, Instant};

use saelab_llm::{ChatClient, ChatMessage, ChatRequest, LlmError, OpenAiClient, OpenAiConfig};

use common::Scripted;

/// A config for `server` with a key from `key_env` (set here) and fast retries.
fn config(base_url: &str, key_env: &str) -> OpenAiConfig {
    std::env::set_var(key_env, "sk-test-123");
    OpenAiConfig {
        key_env: key_env.into(),
        timeout: Duration::from_millis(700),
        retries: 2,
        backoff: Duration::from_millis(20),
        ..OpenAiConfig::new(base_url, "judge-model")
    }
}

fn ask(text: &str) -> ChatRequest {
    ChatRequest::greedy(vec![ChatMessage::user(text)], 16)
}

#[test]
fn the_request_is_exactly_openais_json_with_the_key() {
    let server = Scripted::start();
    let client = OpenAiClient::new(config(&server.base_url, "SAELAB_TEST_KEY_A")).unwrap();
    assert_eq!(
        client.model_id(),
        format!("openai:{}#judge-model", server.base_url)
    );
    let plain = ChatRequest {
        messages: vec![
            ChatMessage::system("Be brief."),
            ChatMessage::user("hello"),
            ChatMessage::assistant("hi"),
            ChatMessage::user("again"),
        ],
        max_tokens: 7,
        temperature: 0.5,
        top_logprobs: None,
    };
    let reply = client.complete(&plain).unwrap();
    assert_eq!(reply.content, "echo: again");
    assert_eq!(reply.finish_reason, "stop");
    assert_eq!(reply.logprobs, None);
    let with_lp = ChatRequest {
        top_logprobs: Some(3),
        ..ask("scored")
    };
    let reply = client.complete(&with_lp).unwrap();
    let lp = reply.logprobs.unwrap();
    assert_eq!(lp.len(), 1);
    assert_eq!((lp[0].token.as_str(), lp[0].logprob), ("echo", -0.5));
    assert_eq!(
        lp[0].top,
        vec![
            ("t0".into(), -0.5),
            ("t1".into(), -1.5),
            ("t2".into(), -2.5)
        ]
    );

    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].line, "POST /v1/chat/completions HTTP/1.1");
    assert_eq!(
        seen[0].body,
        serde_json::json!({
            "model": "judge-model",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi"},
                {"role": "user", "content": "again"},
            ],
            "max_tokens": 7,
            "temperature": 0.5,
        })
    );
    assert_eq!(
        seen[1].body,
        serde_json::json!({
            "model": "judge-model",
            "messages": [{"role": "user", "content": "scored"}],
            "max_tokens": 16,
            "temperature": 0.0,
            "logprobs": true,
            "top_logprobs": 3,
        })
    );
    for s in &seen {
        assert_eq!(s.headers["authorization"], "Bearer sk-test-123");
        assert_eq!(s.headers["content-type"], "application/json");
    }
}

#[test]
fn a_missing_key_fails_at_construction_unless_optional() {
    let server = Scripted::start();
    let mut cfg = OpenAiConfig {
        key_env: "SAELAB_TEST_KEY_NEVER_SET".into(),
        ..OpenAiConfig::new(&server.base_url, "m")
    };
    let e = OpenAiClient::new(cfg.clone()).unwrap_err().to_string();
    assert!(
        e.contains("SAELAB_TEST_KEY_NEVER_SET") && e.contains(&server.base_url),
        "{e}"
    );
    assert!(!e.contains('\n'));
    assert!(
        server.seen().is_empty(),
        "nothing is sent before the key check"
    );
    cfg.key_optional = true;
    let client = OpenAiClient::new(cfg).unwrap();
    client.complete(&ask("no key")).unwrap();
    assert!(!server.seen()[0].headers.contains_key("authorization"));
    // Bad settings are refused up front too.
    for (url, model) in [("127.0.0.1:8080/v1", "m"), ("http://x/v1", " ")] {
        let e = OpenAiClient::new(OpenAiConfig {
            key_optional: true,
            ..OpenAiConfig::new(url, model)
        })
        .unwrap_err();
        assert!(matches!(e, LlmError::Invalid(_)), "{e}");
    }
}

#[test]
fn a_500_then_200_succeeds_after_one_retry() {
    let server = Scripted::start();
    let client = OpenAiClient::new(config(&server.base_url, "SAELAB_TEST_KEY_B")).unwrap();
    let reply = client.complete(&ask("flaky")).unwrap();
    assert_eq!(reply.content, "recovered");
    assert_eq!(server.count("flaky"), 2);
}

#[test]
fn each_failure_is_a_value_and_the_rest_of_the_batch_succeeds() {
    let server = Scripted::start();
    let cfg = config(&server.base_url, "SAELAB_TEST_KEY_C");
    let (timeout, retries, backoff) = (cfg.timeout, cfg.retries, cfg.backoff);
    let client = OpenAiClient::new(OpenAiConfig {
        concurrency: 3,
        ..cfg
    })
    .unwrap();
    let texts = ["one", "down", "hang", "two", "garbage", "three"];
    let reqs: Vec<ChatRequest> = texts.iter().map(|t| ask(t)).collect();
    let t0 = Instant::now();
    let out = client.complete_many(&reqs);
    let took = t0.elapsed();
    assert_eq!(out.len(), texts.len());
    for (t, r) in texts.iter().zip(&out) {
        match (*t, r) {
            ("one" | "two" | "three", Ok(reply)) => assert_eq!(reply.content, format!("echo: {t}")),
            ("down", Err(LlmError::Status { status, msg, url })) => {
                assert_eq!(*status, 500);
                assert_eq!(msg, "internal trouble second line");
                assert!(url.ends_with("/v1/chat/completions"));
            }
            ("hang", Err(LlmError::Timeout { url, .. })) => assert!(url.contains("127.0.0.1")),
            ("garbage", Err(LlmError::Malformed { msg, .. })) => {
                assert!(msg.starts_with("not JSON"), "{msg}")
            }
            (t, r) => panic!("{t}: unexpected {r:?}"),
        }
        if let Err(e) = r {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }
    // 5xx and timeouts are retried; a reply that is not JSON is not.
    assert_eq!(server.count("down"), 1 + retries as usize);
    assert_eq!(server.count("hang"), 1 + retries as usize);
    assert_eq!(server.count("garbage"), 1);
    assert_eq!(server.count("one"), 1);
    // The hang costs its attempts' timeouts and back-offs, no more.
    let bound = timeout * (retries + 1) + backoff * 4 + Duration::from_millis(1500);
    assert!(took < bound, "took {took:?}, bound {bound:?}");
    eprintln!("batch of 6 with a hang, a 500, a non-JSON reply: {took:?}");
}

#[test]
fn a_closed_port_is_unreachable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}/v1");
    let client = OpenAiClient::new(config(&base, "SAELAB_TEST_KEY_D")).unwrap();
    let out = client.complete_many(&[ask("a"), ask("b")]);
    for r in out {
        match r {
            Err(LlmError::Unreachable { url, msg }) => {
                assert_eq!(url, format!("{base}/chat/completions"));
                assert!(!msg.is_empty() && !msg.contains('\n'));
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }
}
