//! `saelab serve --llm` end to end on the real SmolLM2-135M-Instruct (skipped with a
//! message without it, failing under CI): the server as a child process on a free
//! port, saelab-llm's `OpenAiClient` pointed at it for a batch of real completions, and
//! the refusals (a body over the limit, `stream: true`, an unknown route) as 4xx JSON
//! errors. At most 24 new tokens a request: CI has two cores.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use saelab_llm::{ChatClient, ChatMessage, ChatRequest, OpenAiClient, OpenAiConfig};
use saelab_testkit::cli::p;
use saelab_testkit::{real_data, serial};

mod common;
use common::{start_llm_server as start, SAELAB};

/// A raw HTTP/1.1 request: the status and the parsed JSON body of the answer.
fn raw(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    // The server may answer (and close) before the whole of an oversized body is sent.
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    (status, json)
}

#[test]
fn served_model_answers_an_openai_client_and_refuses_bad_requests() {
    let Some(data) = real_data() else { return };
    let _guard = serial();
    let t0 = Instant::now();
    let server = start(&data.model);
    let t_start = t0.elapsed();
    let client = OpenAiClient::new(OpenAiConfig {
        key_optional: true,
        key_env: "SAELAB_TEST_NO_KEY".into(),
        timeout: Duration::from_secs(120),
        retries: 0,
        concurrency: 3,
        ..OpenAiConfig::new(format!("http://{}/v1", server.addr), "anything")
    })
    .unwrap();
    let reqs = vec![
        ChatRequest::greedy(
            vec![ChatMessage::user("What is the capital of France?")],
            24,
        ),
        ChatRequest {
            top_logprobs: Some(3),
            ..ChatRequest::greedy(
                vec![
                    ChatMessage::system("You are terse."),
                    ChatMessage::user("Name an animal that lives in the sea."),
                ],
                16,
            )
        },
        ChatRequest {
            temperature: 0.7,
            ..ChatRequest::greedy(vec![ChatMessage::user("Say something about whales.")], 12)
        },
    ];
    let t0 = Instant::now();
    let out = client.complete_many(&reqs);
    let t_batch = t0.elapsed();
    for (i, r) in out.iter().enumerate() {
        let r = r.as_ref().unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert!(!r.content.trim().is_empty(), "request {i}: empty");
        assert!(
            ["stop", "length"].contains(&r.finish_reason.as_str()),
            "{r:?}"
        );
        assert_eq!(r.logprobs.is_some(), i == 1, "request {i}");
    }
    assert!(
        out[0].as_ref().unwrap().content.contains("Paris"),
        "{out:?}"
    );
    let lp = out[1].as_ref().unwrap().logprobs.as_ref().unwrap();
    assert!(!lp.is_empty() && lp.len() <= 16);
    for t in lp {
        assert_eq!(t.top.len(), 3);
        let mass: f32 = t.top.iter().map(|(_, l)| l.exp()).sum();
        assert!(mass <= 1.0 + 1e-4, "top-3 mass {mass}");
        assert!(t.logprob <= 0.0 && t.top.windows(2).all(|w| w[0].1 >= w[1].1));
    }

    // OpenAI's reply shape, usage included.
    let body = serde_json::json!({
        "model": "x",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4,
        "temperature": 0,
    });
    let (status, v) = raw(
        &server.addr,
        "POST",
        "/v1/chat/completions",
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(v["choices"][0]["logprobs"].is_null());
    let u = &v["usage"];
    let (pt, ct) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    );
    assert!(pt > 5 && (1..=4).contains(&ct));
    assert_eq!(u["total_tokens"].as_u64().unwrap(), pt + ct);
    let (status, v) = raw(&server.addr, "GET", "/v1/models", b"");
    assert_eq!(status, 200);
    assert_eq!(v["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1.gguf");

    // Refusals: 4xx with OpenAI's error object, before the model runs.
    let too_big = serde_json::json!({
        "messages": [{"role": "user", "content": "x".repeat(300 * 1024)}],
    });
    let stream = serde_json::json!({
        "messages": [{"role": "user", "content": "Hi"}], "stream": true,
    });
    let too_many = serde_json::json!({
        "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100000,
    });
    for (path, body, want) in [
        ("/v1/chat/completions", too_big.to_string(), 413),
        ("/v1/chat/completions", stream.to_string(), 400),
        ("/v1/chat/completions", too_many.to_string(), 400),
        ("/v1/chat/completions", "{not json".to_string(), 400),
        ("/v1/embeddings", "{}".to_string(), 404),
    ] {
        let (status, v) = raw(&server.addr, "POST", path, body.as_bytes());
        assert_eq!(status, want, "{path}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(!msg.is_empty() && !msg.contains('\n'), "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    // The server is still up and answers after the refusals.
    let again = client.complete(&reqs[0]).unwrap();
    assert_eq!(&again, out[0].as_ref().unwrap());

    let batches: Vec<String> = server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("chat completions"))
        .cloned()
        .collect();
    eprintln!(
        "server up in {t_start:?}; 3 requests ({:?}) in {t_batch:?}; worker batches: {batches:?}",
        [24, 16, 12]
    );
}

#[test]
fn a_model_that_does_not_load_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.gguf");
    let out = SAELAB.run(&["serve", "--llm", p(&missing), "--port", "0"]);
    saelab_testkit::cli::assert_one_line_error(&out, &["absent.gguf"]);
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"not a model").unwrap();
    let out = SAELAB.run(&["serve", "--llm", p(&bad), "--port", "0"]);
    saelab_testkit::cli::assert_one_line_error(&out, &["bad.gguf", "GGUF"]);
}
