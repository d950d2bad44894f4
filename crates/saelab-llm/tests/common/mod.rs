//! A scripted chat-completion server for the client tests: a `std::net::TcpListener`
//! on 127.0.0.1, one thread per connection, that records every request (headers and
//! body) and answers by the last user message's text:
//!
//! - `"flaky"`: HTTP 500 the first time, then a reply;
//! - `"down"`: HTTP 500 always;
//! - `"hang"`: nothing for 5 s, then the connection closes;
//! - `"garbage"`: HTTP 200 with a body that is not JSON;
//! - anything else: HTTP 200, the reply `"echo: <text>"` with finish_reason `"stop"`,
//!   and, when the request asked for `top_logprobs`, one token entry with that many
//!   alternatives.
//!
//! Every answer closes its connection (`Connection: close`).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The request line, e.g. `POST /v1/chat/completions HTTP/1.1`.
    pub line: String,
    /// Header names (lower-cased) and values.
    pub headers: HashMap<String, String>,
    /// The body, parsed.
    pub body: serde_json::Value,
}

/// The running server.
pub struct Scripted {
    /// `http://127.0.0.1:<port>/v1`.
    pub base_url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Scripted {
    /// Starts a server on a free port.
    pub fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let flaky: Arc<Mutex<u32>> = Arc::default();
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (s, flaky) = (s.clone(), flaky.clone());
                std::thread::spawn(move || answer(conn, &s, &flaky));
            }
        });
        Scripted {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            seen,
        }
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests carried `text` as their last message.
    pub fn count(&self, text: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| last_text(&s.body) == text)
            .count()
    }
}

fn last_text(body: &serde_json::Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn answer(conn: TcpStream, seen: &Mutex<Vec<Seen>>, flaky: &Mutex<u32>) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    if r.read_exact(&mut body).is_err() {
        return;
    }
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let text = last_text(&body);
    seen.lock().unwrap().push(Seen {
        line: line.trim().to_string(),
        headers,
        body: body.clone(),
    });
    let (status, reply) = match text.as_str() {
        "flaky" => {
            let mut n = flaky.lock().unwrap();
            *n += 1;
            if *n == 1 {
                (500, r#"{"error":{"message":"try again"}}"#.to_string())
            } else {
                (200, completion("recovered", None))
            }
        }
        "down" => (500, "internal trouble\nsecond line".to_string()),
        "hang" => {
            std::thread::sleep(Duration::from_secs(5));
            return;
        }
        "garbage" => (200, "<html>not json</html>".to_string()),
        _ => (
            200,
            completion(&format!("echo: {text}"), body["top_logprobs"].as_u64()),
        ),
    };
    let mut w = conn;
    let _ = write!(
        w,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{reply}",
        reply.len()
    );
}

fn completion(content: &str, top: Option<u64>) -> String {
    let logprobs = top.map(|n| {
        let alts: Vec<serde_json::Value> = (0..n)
            .map(|i| serde_json::json!({"token": format!("t{i}"), "logprob": -(i as f64) - 0.5}))
            .collect();
        serde_json::json!({"content": [{"token": "echo", "logprob": -0.5, "top_logprobs": alts}]})
    });
    serde_json::json!({
        "id": "x",
        "object": "chat.completion",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
            "logprobs": logprobs,
        }],
    })
    .to_string()
}
