//! The dashboard server against a real features folder: the SmolLM2 model and corpus
//! (`saelab_testkit::real_data`: skipped with a message without them, failing under
//! CI), a TopK SAE with seeded random weights at `blocks.3.hook_resid_post` (no
//! training needed for the server's rules), and a features pass of a few thousand
//! tokens made once per test binary through `saelab_jobs::features`.
//!
//! One test per safety rule — loopback by default, `..` and absolute paths refused,
//! bodies and prompts bounded with a 4xx, an unknown latent a 404, 200 concurrent
//! requests all answered — plus the JSON API's numbers against the records, the pages'
//! `data-*` values against the records, the static export, and one-line errors for a
//! bad folder or the wrong SAE; and steering (`POST /api/steer`): its refusals without
//! the model (404, 413, 400), two continuations of a real prompt from one seed, and
//! every mistake of a request a 4xx before the model runs; and the explanations of
//! `saelab autointerp` (an `explanations.json` merged into the folder with
//! `saelab_features::explanations::merge_explanations`, as the job does): in the latent
//! JSON, on the latent pages (escaped), in the search (`/api/explanations`,
//! `/explanations`: substrings, the limit, over-long texts refused), in the export, and
//! a bad file refused. Requests are raw HTTP/1.1 over loopback TCP, so the tests see
//! exactly what a browser would be sent.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use saelab_core::arch::{Registered, TopKConfig};
use saelab_core::config::SaeMetadata;
use saelab_core::format::save_sae;
use saelab_core::{ParamSet, Sae, SaeConfig, Tensor};
use saelab_features::explanations::{merge_explanations, ExplanationRecord, ExplanationScore};
use saelab_features::{Features, LatentRecord};
use saelab_jobs::features::{features, FeaturesInput, FeaturesRequest};
use saelab_lm::text::Part;
use saelab_web::server::{bind, serve};
use saelab_web::{AppState, Explorer, ServeOptions, Site};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOOK: &str = "blocks.3.hook_resid_post";
const N_LATENTS: usize = 192;

/// The folder made once: the SAE directory, the features folder, the model path.
struct Fixture {
    _tmp: tempfile::TempDir,
    sae: PathBuf,
    features: PathBuf,
    model: PathBuf,
}

fn random_sae(d: usize, n: usize, k: usize, seed: u64) -> Sae {
    let (w_enc, w_dec) = saelab_testkit::tied_random_weights(d, n, seed, 1.0);
    let mut cfg = SaeConfig::new(TopKConfig::with_k(k).into(), d, n);
    cfg.metadata = SaeMetadata {
        hook_name: Some(HOOK.into()),
        ..SaeMetadata::default()
    };
    let mut p = ParamSet::new();
    p.insert("W_enc", Tensor::new(&[d, n], w_enc).unwrap());
    p.insert(
        "b_enc",
        Tensor::new(&[n], saelab_testkit::lcg_uniform(n, seed + 1, 0.5)).unwrap(),
    );
    p.insert("W_dec", Tensor::new(&[n, d], w_dec).unwrap());
    p.insert("b_dec", Tensor::new(&[d], vec![0.0; d]).unwrap());
    Sae::new(cfg, p).unwrap()
}

/// The shared fixture, or `None` (skipping) without the real data.
fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Option<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let data = saelab_testkit::real_data()?;
        let _serial = saelab_testkit::serial();
        let tmp = tempfile::tempdir().unwrap();
        let sae = tmp.path().join("sae");
        save_sae(&random_sae(576, N_LATENTS, 8, 11), &sae, None).unwrap();
        let out = tmp.path().join("features");
        let input = FeaturesInput::Corpus {
            corpus: data.corpus.clone(),
            jsonl_field: "text".into(),
            part: Part::Train,
            ctx_len: 64,
        };
        let mut req =
            FeaturesRequest::with_input(sae.clone(), data.model.clone(), input, 3000, out.clone());
        req.range_size = 64;
        features(&req, &AtomicBool::new(false), &mut |_| {}).unwrap();
        merge_explanations(&out, explanation_records()).unwrap();
        Some(Fixture {
            _tmp: tmp,
            sae,
            features: out,
            model: data.model,
        })
    })
    .as_ref()
}

/// The text of latent 3's token-set explanation: HTML that must arrive escaped.
const HTML_TEXT: &str = "\" whale\", \" Whales\", <b>sea</b> & 'salt'";
/// Latents 10 to 39 hold one explanation each with this word (for the limit).
const FILLER: &str = "filler";

fn score(
    scorer: &str,
    metric: &str,
    value: Option<f64>,
    shuffled: Option<f64>,
    failed: usize,
) -> ExplanationScore {
    ExplanationScore {
        scorer: scorer.into(),
        metric: metric.into(),
        value,
        shuffled,
        baseline: 0.5,
        failed,
    }
}

/// The explanations the fixture merges into its folder: two of latent 3 (one of them
/// HTML), one of latent 5, one each of latents 10 to 39; three hold "whale".
fn explanation_records() -> Vec<ExplanationRecord> {
    let rec = |latent: u32, explainer: &str, text: &str, scores| ExplanationRecord {
        latent,
        explainer: explainer.into(),
        explanation: text.into(),
        source: "runs/autointerp/test".into(),
        scores,
    };
    let mut v = vec![
        rec(
            3,
            "token-set",
            HTML_TEXT,
            vec![
                score("embedding", "auroc", Some(0.612), Some(0.48), 0),
                score("surprisal", "auroc", None, None, 3),
            ],
        ),
        rec(
            3,
            "llm:local:test.gguf#0123abcd",
            "Mentions of whales and the open sea",
            vec![score(
                "detection",
                "balanced_accuracy",
                Some(0.41),
                Some(0.55),
                1,
            )],
        ),
        rec(5, "token-set", "\" WHALE-oil\", \" lamp\"", Vec::new()),
    ];
    for i in 10..40 {
        v.push(rec(
            i,
            "token-set",
            &format!("\" {FILLER} {i}\""),
            vec![score("embedding", "auroc", Some(0.5), Some(0.5), 0)],
        ));
    }
    v
}

/// The state of a server over the fixture, with the explorer when `explorer`.
fn state(f: &Fixture, explorer: bool) -> Arc<AppState> {
    let feats = Features::open(&f.features).unwrap();
    let ex = explorer.then(|| Explorer::load(&feats, &f.sae, &f.model).unwrap());
    AppState::new(Site::from_features(feats).unwrap(), ex)
}

/// Starts a server on a free loopback port; returns its address.
async fn start(st: Arc<AppState>) -> std::net::SocketAddr {
    let l = bind(ServeOptions {
        port: 0,
        ..ServeOptions::default()
    })
    .await
    .unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(serve(l, st, std::future::pending()));
    addr
}

/// A response: status and body.
struct Reply {
    status: u16,
    body: String,
}

/// Sends one raw HTTP/1.1 request (`Connection: close`) and reads the whole answer.
async fn request(addr: std::net::SocketAddr, method: &str, path: &str, body: &[u8]) -> Reply {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    if body.len() <= saelab_web::server::BODY_LIMIT {
        s.write_all(body).await.unwrap();
        s.read_to_end(&mut raw).await.unwrap();
    } else {
        // Over the limit, the server answers from the Content-Length alone; the body is
        // offered only afterwards, so that no unread bytes make it reset the connection.
        let _ = s.read_to_end(&mut raw).await;
        let _ = s.write_all(body).await;
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Reply { status, body }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

async fn get(addr: std::net::SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, b"").await
}

fn json(r: &Reply) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_loopback_by_default() {
    assert_eq!(ServeOptions::default().host.to_string(), "127.0.0.1");
    let l = bind(ServeOptions {
        port: 0,
        ..ServeOptions::default()
    })
    .await
    .unwrap();
    assert!(l.local_addr().unwrap().ip().is_loopback());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_climbing_and_absolute_paths() {
    let Some(f) = fixture() else { return };
    let addr = start(state(f, false)).await;
    for path in [
        "/latent/../features.json",
        "/latent/..%2Ffeatures.json",
        "/latent/%2e%2e",
        "/assets/..%2F..%2Fetc%2Fpasswd",
        "/assets/%2Fetc%2Fpasswd",
        "/api/latent/%2Fetc%2Fpasswd",
        "/latent//etc/passwd",
        "/../../etc/passwd",
    ] {
        let r = get(addr, path).await;
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        let v = json(&r);
        assert!(
            v["error"].as_str().unwrap().starts_with("refused path"),
            "{path}: {v}"
        );
    }
    // What the check lets through still works.
    assert_eq!(get(addr, "/assets/style.css").await.status, 200);
    assert_eq!(get(addr, "/assets/passwd").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_request_bodies_and_prompts() {
    let Some(f) = fixture() else { return };
    let addr = start(state(f, true)).await;
    let big = vec![b'x'; 100_000];
    let r = request(addr, "POST", "/api/prompt", &big).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(error_of(&r).contains("over 16384 bytes"), "{}", r.body);

    let long = serde_json::json!({ "text": "word ".repeat(1000), "latent": 0 }).to_string();
    let r = request(addr, "POST", "/api/prompt", long.as_bytes()).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        json(&r)["error"].as_str().unwrap().contains("at most 4096"),
        "{}",
        r.body
    );

    let many = serde_json::json!({ "text": "a ".repeat(400) }).to_string();
    let r = request(addr, "POST", "/api/prompt", many.as_bytes()).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        json(&r)["error"].as_str().unwrap().contains("at most 256"),
        "{}",
        r.body
    );

    let r = request(addr, "POST", "/api/prompt", b"{not json").await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = request(addr, "POST", "/api/prompt", b"{\"text\": \"\"}").await;
    assert_eq!(r.status, 400, "{}", r.body);

    // A prompt within the limits is answered, one value per token.
    let ok = serde_json::json!({ "text": "The whale swam.", "latent": 3, "top": 4 }).to_string();
    let r = request(addr, "POST", "/api/prompt", ok.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = json(&r);
    let toks = v["tokens"].as_array().unwrap();
    assert!(!toks.is_empty() && toks.iter().all(|t| t["top"].as_array().unwrap().len() <= 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_latent_is_a_404_and_bad_ids_a_400() {
    let Some(f) = fixture() else { return };
    let addr = start(state(f, true)).await;
    for path in ["/latent/192", "/latent/4000000000", "/api/latent/192"] {
        let r = get(addr, path).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert!(r.body.contains("latent "), "{path}: {}", r.body);
    }
    assert!(json(&get(addr, "/api/latent/192").await)["error"]
        .as_str()
        .unwrap()
        .contains("the SAE has 192 latents"));
    for path in [
        "/latent/abc",
        "/api/latent/-1",
        "/api/latent/99999999999",
        "/?sort=nope",
        "/api/latents?per=0",
    ] {
        assert_eq!(get(addr, path).await.status, 400, "{path}");
    }
    assert_eq!(get(addr, "/no/such/page").await.status, 404);
    let body = serde_json::json!({ "text": "hello", "latent": 192 }).to_string();
    assert_eq!(
        request(addr, "POST", "/api/prompt", body.as_bytes())
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_200_concurrent_requests() {
    let Some(f) = fixture() else { return };
    let addr = start(state(f, false)).await;
    let paths: Vec<String> = (0..200)
        .map(|i| match i % 4 {
            0 => format!("/api/latent/{}", i % N_LATENTS),
            1 => format!("/latent/{}", i % N_LATENTS),
            2 => "/?sort=max&order=desc".to_string(),
            _ => format!("/api/latents?sort=density&page={}&per=10", 1 + i % 5),
        })
        .collect();
    let tasks: Vec<_> = paths
        .iter()
        .cloned()
        .map(|p| {
            tokio::spawn(async move {
                let r = tokio::time::timeout(std::time::Duration::from_secs(120), get(addr, &p))
                    .await
                    .unwrap_or_else(|_| panic!("{p}: no answer in 120 s"));
                (p, r.status)
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        let (p, status) = t.await.unwrap();
        assert_eq!(status, 200, "{p}");
        ok += 1;
    }
    assert_eq!(ok, 200);
}

/// The `attr="…"` value of each element that starts with `marker`, in order; with an
/// empty `attr`, the quoted value right after `marker` (which ends in `attr=`).
fn attrs(html: &str, marker: &str, attr: &str) -> Vec<String> {
    html.split(marker)
        .skip(1)
        .map(|s| {
            let a = format!("{attr}=\"");
            let at = if attr.is_empty() {
                1
            } else {
                s.find(&a).unwrap() + a.len()
            };
            s[at..at + s[at..].find('"').unwrap()].to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_pages_show_the_records_numbers() {
    let Some(f) = fixture() else { return };
    let addr = start(state(f, false)).await;
    let feats = Features::open(&f.features).unwrap();
    let tokens = feats.tokens().unwrap();
    let ctx = feats.manifest().settings.ctx_len;
    for i in 0..N_LATENTS {
        let rec = feats.latent(i).unwrap();
        let v = json(&get(addr, &format!("/api/latent/{i}")).await);
        let back: LatentRecord = serde_json::from_value(v["record"].clone()).unwrap();
        assert_eq!(back, rec, "latent {i}");
        let top_tokens: Vec<u32> = rec
            .top
            .iter()
            .map(|s| tokens[s.seq as usize * ctx + s.pos as usize])
            .collect();
        assert_eq!(v["top_tokens"], serde_json::json!(top_tokens));

        // The page: one row per top sample, its value and the marked token's value
        // exactly the record's; 50 bars summing to the count; the logit rows.
        let page = get(addr, &format!("/latent/{i}")).await;
        assert_eq!(page.status, 200);
        let top_html = &page.body[page.body.find("id=\"top\"").unwrap()..];
        let top_html = &top_html[..top_html.find("</section>").unwrap()];
        let values = attrs(top_html, "<div class=\"ctx\"", "data-value");
        let marked = attrs(top_html, "class=\"t q\"", "data-act");
        assert_eq!(values.len(), rec.top.len());
        for (k, s) in rec.top.iter().enumerate() {
            assert_eq!(values[k].parse::<f32>().unwrap(), s.value);
            assert_eq!(marked[k].parse::<f32>().unwrap(), s.value);
        }
        let counts: Vec<u64> = attrs(&page.body, "<rect class=\"bar\"", "data-count")
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        if rec.count > 0 {
            assert_eq!(counts.len(), 50);
        }
        assert_eq!(counts.iter().sum::<u64>(), rec.count);
        let ids: Vec<u32> = attrs(&page.body, "<tr data-token-id=", "")
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        let want: Vec<u32> = rec
            .logits
            .bottom
            .iter()
            .chain(&rec.logits.top)
            .map(|t| t.token)
            .collect();
        assert_eq!(ids, want);
    }
    // The index: every latent once, densities in order.
    let v = json(&get(addr, "/api/latents?sort=density&per=1000").await);
    assert_eq!(v["total"], N_LATENTS);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), N_LATENTS);
    let mut prev = f64::INFINITY;
    for r in rows {
        let rec = feats
            .latent(r["latent"].as_u64().unwrap() as usize)
            .unwrap();
        assert_eq!(r["density"].as_f64().unwrap(), rec.density);
        assert_eq!(r["count"].as_u64().unwrap(), rec.count);
        assert!(rec.density <= prev);
        prev = rec.density;
    }
    // The search: every hit has the token among its max or promoted tokens.
    let rec = feats
        .latent(rows[0]["latent"].as_u64().unwrap() as usize)
        .unwrap();
    let t = tokens[rec.top[0].seq as usize * ctx + rec.top[0].pos as usize];
    let text = feats.vocab().unwrap()[t as usize].trim().to_string();
    let q: String = text.bytes().map(|b| format!("%{b:02X}")).collect();
    let v = json(&get(addr, &format!("/api/latents?q={q}&per=1000")).await);
    let hits = v["rows"].as_array().unwrap();
    assert!(
        hits.iter().any(|h| h["latent"] == rec.latent),
        "{text:?}: {v}"
    );
    assert_eq!(v["total"].as_u64().unwrap() as usize, hits.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explanations_are_in_the_latent_json_the_pages_and_the_search() {
    let Some(f) = fixture() else { return };
    let addr = start(state(f, false)).await;
    let all = explanation_records();

    // The latent JSON: latent 3's two records (by explainer), none for latent 4.
    let v = json(&get(addr, "/api/latent/3").await);
    let got: Vec<ExplanationRecord> = serde_json::from_value(v["explanations"].clone()).unwrap();
    let mut want: Vec<ExplanationRecord> = all.iter().filter(|r| r.latent == 3).cloned().collect();
    want.sort_by(|a, b| a.explainer.cmp(&b.explainer));
    assert_eq!(got, want);
    assert_eq!(got[1].explanation, HTML_TEXT);
    let v = json(&get(addr, "/api/latent/4").await);
    assert_eq!(v["explanations"], serde_json::json!([]));

    // The page: both records, the text escaped, every score with its control.
    let page = get(addr, "/latent/3").await;
    assert_eq!(page.status, 200);
    let sec = &page.body[page.body.find("id=\"explanations\"").unwrap()..];
    let sec = &sec[..sec.find("</section>").unwrap()];
    assert!(sec.contains("data-count=\"2\""), "{sec}");
    assert!(
        sec.contains(
            "&quot; whale&quot;, &quot; Whales&quot;, &lt;b&gt;sea&lt;/b&gt; &amp; &#39;salt&#39;"
        ),
        "{sec}"
    );
    assert!(!page.body.contains("<b>sea</b>"));
    assert!(sec.contains("Mentions of whales and the open sea"));
    assert_eq!(sec.matches("<tr class=").count(), 3);
    assert!(sec.contains("data-scorer=\"embedding\" data-metric=\"auroc\" data-value=\"0.612\" data-shuffled=\"0.48\""));
    assert!(sec.contains("<td class=\"num value\">0.612</td><td class=\"num\">0.480</td><td class=\"num delta\">+0.132 ▲</td>"), "{sec}");
    assert!(sec.contains("data-verdict=\"worse\"") && sec.contains("−0.140 ▼"));
    assert!(sec.contains("data-value=\"\" data-shuffled=\"\"") && sec.contains(">—<"));
    let page = get(addr, "/latent/4").await.body;
    assert!(page.contains("id=\"no-explanations\"") && page.contains("run saelab autointerp"));

    // The search: a substring in any case, by latent then explainer, the first score.
    let v = json(&get(addr, "/api/explanations?q=WhAlE").await);
    assert_eq!(v["total"], 3);
    assert_eq!(v["records"], all.len());
    let hits = v["hits"].as_array().unwrap();
    let ids: Vec<(u64, &str)> = hits
        .iter()
        .map(|h| {
            (
                h["latent"].as_u64().unwrap(),
                h["explainer"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            (3, "llm:local:test.gguf#0123abcd"),
            (3, "token-set"),
            (5, "token-set")
        ]
    );
    assert_eq!(hits[1]["explanation"], HTML_TEXT);
    assert_eq!(hits[1]["score"]["scorer"], "embedding");
    assert_eq!(hits[1]["score"]["value"], 0.612);
    assert_eq!(hits[2]["score"], serde_json::Value::Null);
    // Spaces and quotes percent-encoded, as a form sends them.
    let v = json(&get(addr, "/api/explanations?q=%22+whales%22").await);
    assert_eq!(v["total"], 1);
    // The limit bounds the hits, not the total; without q, every record.
    let v = json(&get(addr, &format!("/api/explanations?q={FILLER}&limit=7")).await);
    assert_eq!(
        (v["total"].as_u64(), v["hits"].as_array().unwrap().len()),
        (Some(30), 7)
    );
    assert_eq!(v["hits"][0]["latent"], 10);
    let v = json(&get(addr, "/api/explanations").await);
    assert_eq!(v["total"], all.len());
    assert_eq!(v["hits"].as_array().unwrap().len(), all.len().min(50));
    assert_eq!(
        json(&get(addr, "/api/explanations?q=narwhal").await)["total"],
        0
    );

    // Over-long texts and bad limits: a 400 naming the field, as JSON and as a page.
    let long = "a".repeat(201);
    for (path, field) in [
        (format!("/api/explanations?q={long}"), "q: "),
        (
            format!("/api/explanations?q={}", "whale ".repeat(1000)),
            "q: ",
        ),
        ("/api/explanations?q=whale&limit=0".to_string(), "limit=0"),
        ("/api/explanations?limit=201".to_string(), "limit=201"),
        ("/api/explanations?limit=lots".to_string(), "limit=lots"),
    ] {
        let r = get(addr, &path.replace(' ', "+")).await;
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert!(error_of(&r).starts_with(field), "{path}: {}", r.body);
    }
    let at_bound = "a".repeat(200);
    assert_eq!(
        get(addr, &format!("/api/explanations?q={at_bound}"))
            .await
            .status,
        200
    );
    let r = get(addr, &format!("/explanations?q={long}")).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("at most 200 bytes"), "{}", r.body);

    // The search page, and the index's form that leads to it.
    let r = get(addr, "/explanations?q=whale").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("data-total=\"3\""), "{}", r.body);
    assert_eq!(attrs(&r.body, "<tr data-latent=", ""), ["3", "3", "5"]);
    assert!(r.body.contains("href=\"/latent/3\"") && r.body.contains("href=\"/latent/5\""));
    assert!(r.body.contains("&lt;b&gt;sea&lt;/b&gt;") && !r.body.contains("<b>sea</b>"));
    assert!(r.body.contains("embedding auroc 0.612 (shuffled 0.480)"));
    let index = get(addr, "/").await.body;
    assert!(index.contains("action=\"/explanations\"") && index.contains("id=\"explain-search\""));
}

#[test]
fn a_folder_without_explanations_says_so_and_a_bad_file_is_refused() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("copy");
    copy_dir(&f.features, &copy);
    let file = copy.join("explanations.json");
    std::fs::remove_file(&file).unwrap();
    let site = Site::open(&copy).unwrap();
    assert!(site.explanations().is_empty());
    block_on(async {
        let addr = start(AppState::new(site, None)).await;
        let page = get(addr, "/latent/3").await.body;
        assert!(page.contains("id=\"no-explanations\""));
        let v = json(&get(addr, "/api/explanations?q=whale").await);
        assert_eq!(
            (v["total"].as_u64(), v["records"].as_u64()),
            (Some(0), Some(0))
        );
        let page = get(addr, "/explanations").await.body;
        assert!(page.contains("run saelab autointerp"), "{page}");
    });

    // A corrupt file, and one naming a latent the SAE does not have: one-line errors
    // naming explanations.json.
    std::fs::write(&file, b"{\"version\": 1, \"records\": [").unwrap();
    let e = Site::open(&copy).unwrap_err().to_string();
    assert!(
        e.contains("explanations.json") && e.contains("corrupt") && !e.contains('\n'),
        "{e}"
    );
    let mut far = explanation_records();
    far.truncate(1);
    far[0].latent = N_LATENTS as u32;
    std::fs::remove_file(&file).unwrap();
    merge_explanations(&copy, far).unwrap();
    let e = Site::open(&copy).unwrap_err().to_string();
    assert!(
        e.contains("explanations.json") && e.contains("latent 192") && !e.contains('\n'),
        "{e}"
    );
}

#[test]
fn export_writes_every_page_with_relative_links_atomically() {
    let Some(f) = fixture() else { return };
    let site = Site::open(&f.features).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("html");
    let s = saelab_web::export_html(&site, &out).unwrap();
    assert_eq!(s.pages, N_LATENTS);
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let files = names(&out);
    assert_eq!(files.len(), N_LATENTS + 3, "{files:?}");
    let index = std::fs::read_to_string(out.join("index.html")).unwrap();
    let page = std::fs::read_to_string(out.join("latent-5.html")).unwrap();
    for html in [&index, &page] {
        assert!(
            !html.contains("href=\"/") && !html.contains("src=\"/"),
            "absolute link"
        );
        assert!(html.contains("href=\"style.css\"") && html.contains("src=\"app.js\""));
    }
    assert!(index.contains("href=\"latent-5.html\""));
    // No steering without a server.
    assert!(
        !page.contains("id=\"steer"),
        "a steering panel in the export"
    );
    assert_eq!(index.matches("<tr data-latent=").count(), N_LATENTS);
    // The explanations: latent 3's section on its page, escaped; every record
    // embedded in the index for its script, no `<` able to close the script.
    let page3 = std::fs::read_to_string(out.join("latent-3.html")).unwrap();
    assert!(page3.contains("id=\"explanations\" data-count=\"2\""));
    assert!(page3.contains("&lt;b&gt;sea&lt;/b&gt; &amp;") && !page3.contains("<b>sea"));
    assert!(page3.contains("data-value=\"0.612\""));
    assert!(page.contains("WHALE-oil") && page.contains("Not scored."));
    let page4 = std::fs::read_to_string(out.join("latent-4.html")).unwrap();
    assert!(page4.contains("id=\"no-explanations\""));
    let at = index.find("id=\"explanations-data\">").unwrap();
    let data = &index[at + "id=\"explanations-data\">".len()..];
    let data = &data[..data.find("</script>").unwrap()];
    assert!(!data.contains('<'));
    let rows: Vec<serde_json::Value> = serde_json::from_str(data).unwrap();
    assert_eq!(rows.len(), explanation_records().len());
    assert!(rows
        .iter()
        .any(|r| r["text"] == HTML_TEXT && r["latent"] == 3));
    assert!(index.contains("id=\"explain-search\""));
    // Nothing else beside the export, and a second export replaces the first.
    assert_eq!(names(tmp.path()), vec!["html".to_string()]);
    std::fs::write(out.join("stale.html"), "x").unwrap();
    saelab_web::export_html(&site, &out).unwrap();
    assert!(!out.join("stale.html").exists());
    assert_eq!(names(tmp.path()), vec!["html".to_string()]);
}

#[test]
fn a_bad_folder_or_another_sae_is_a_one_line_error() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let e = Site::open(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("not a features folder"), "{e}");

    // A corrupt stats line: the error names the stats file.
    let copy = tmp.path().join("copy");
    copy_dir(&f.features, &copy);
    let stats = copy.join("stats/0_63.jsonl");
    let mut bytes = std::fs::read(&stats).unwrap();
    bytes[10] = b'#';
    std::fs::write(&stats, bytes).unwrap();
    let e = Site::open(&copy).unwrap_err().to_string();
    assert!(e.contains("0_63.jsonl") && !e.contains('\n'), "{e}");

    // Another SAE: the error names features.json.
    let other = tmp.path().join("other-sae");
    save_sae(&random_sae(576, N_LATENTS, 8, 99), &other, None).unwrap();
    let feats = Features::open(&f.features).unwrap();
    let e = Explorer::load(&feats, &other, &f.model)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("features.json") && e.contains("another SAE"),
        "{e}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dst = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dst);
        } else {
            std::fs::copy(&p, &dst).unwrap();
        }
    }
}

/// Runs `fut` on a runtime of its own (for the tests that hold [`saelab_testkit::serial`]
/// across it, which an `async` test cannot do without holding a lock across awaits).
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(fut)
}

async fn steer(addr: std::net::SocketAddr, body: &serde_json::Value) -> Reply {
    request(addr, "POST", "/api/steer", body.to_string().as_bytes()).await
}

fn error_of(r: &Reply) -> String {
    let v = json(r);
    assert_eq!(v["status"], r.status, "{}", r.body);
    let e = v["error"].as_str().unwrap().to_string();
    assert!(!e.is_empty() && !e.contains('\n'), "{e:?}");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steer_without_the_model_is_a_404_and_bad_bodies_a_413_or_400() {
    let Some(f) = fixture() else { return };
    let addr = start(state(f, false)).await;
    let r = request(addr, "POST", "/api/steer", &vec![b'x'; 100_000]).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(error_of(&r).contains("over 16384 bytes"));
    for body in [
        &b"{not json"[..],
        b"{\"prompt\": \"Hi\"}",
        b"{\"prompt\": \"Hi\", \"edits\": [], \"temperatur\": 1}",
    ] {
        let r = request(addr, "POST", "/api/steer", body).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(
            error_of(&r).contains("not a steering request"),
            "{}",
            r.body
        );
    }
    let ok = serde_json::json!({
        "prompt": "The whale", "edits": [{ "latent": 3, "mode": "add", "strength": "4x" }]
    });
    let r = steer(addr, &ok).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(
        error_of(&r),
        "steering needs a model and an SAE: start saelab serve with --sae RUN --model M"
    );
    // The page says so instead of showing the form.
    let page = get(addr, "/latent/3").await.body;
    assert!(page.contains("id=\"steer\"") && !page.contains("id=\"steer-form\""));
    assert!(page.contains("--sae RUN --model M"));
}

#[test]
fn steer_continues_a_prompt_twice_from_one_seed() {
    let Some(f) = fixture() else { return };
    let _serial = saelab_testkit::serial();
    let st = state(f, true);
    let feats = Features::open(&f.features).unwrap();
    // The most active latent of the pass: a strength of 4x is four times its max.
    let rec = (0..N_LATENTS)
        .map(|i| feats.latent(i).unwrap())
        .max_by(|a, b| a.max.total_cmp(&b.max).then(b.latent.cmp(&a.latent)))
        .unwrap();
    assert!(rec.max > 0.0);
    block_on(async {
        let addr = start(st).await;
        let page = get(addr, &format!("/latent/{}", rec.latent)).await.body;
        assert!(page.contains(&format!("data-latent=\"{}\"", rec.latent)));
        assert!(page.contains("id=\"steer-form\"") && page.contains("href=\"#steer\""));

        let body = |strength: &str, measure: bool| {
            serde_json::json!({
                "prompt": "The whale rose from the sea, and",
                "edits": [{ "latent": rec.latent, "mode": "add", "strength": strength }],
                "max_new_tokens": 8, "seed": 5, "measure": measure,
            })
        };
        let t0 = std::time::Instant::now();
        let a = steer(addr, &body("4x", true)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let b = steer(addr, &body("raw:-3", false)).await;
        assert_eq!(b.status, 200, "{}", b.body);
        eprintln!("two steering requests of 8 tokens: {:.1?}", t0.elapsed());
        let (a, b) = (json(&a), json(&b));
        for v in [&a, &b] {
            for side in ["unsteered", "steered"] {
                let c = &v[side];
                let n = c["tokens"].as_array().unwrap().len();
                assert!(
                    n == 8 || (c["finish"] == "stop" && n < 8),
                    "{side}: {n} tokens, finish {}",
                    c["finish"]
                );
                assert!(c["text"].is_string());
            }
            assert!(v["prompt_tokens"].as_u64().unwrap() > 1);
        }
        // The same seed, the same unsteered text whatever the edit.
        assert_eq!(a["unsteered"], b["unsteered"]);
        let op = &a["edits"][0]["op"];
        assert_eq!(op["op"], "add");
        let want = 4.0 * rec.max;
        assert!(
            (op["value"].as_f64().unwrap() as f32 - want).abs() <= 1e-5 * want.abs(),
            "{op} vs 4 × {}",
            rec.max
        );
        assert_eq!(a["edits"][0]["positions"], "all");
        // Measured when asked, once per edited latent.
        let fx = a["effects"].as_array().unwrap();
        assert_eq!(fx.len(), 1);
        assert_eq!(fx[0]["latent"], rec.latent);
        assert!(fx[0]["steered"]["perplexity"].as_f64().unwrap() > 0.0);
        assert!(b["effects"].as_array().unwrap().is_empty());
    });
}

#[test]
fn steer_refuses_every_mistake_with_a_4xx() {
    let Some(f) = fixture() else { return };
    let _serial = saelab_testkit::serial();
    let st = state(f, true);
    // A latent that fired, so that only the strength is wrong below.
    let feats = Features::open(&f.features).unwrap();
    let live = (0..N_LATENTS)
        .find(|&i| feats.latent(i).unwrap().max > 0.0)
        .unwrap();
    block_on(async {
        let addr = start(st).await;
        let edit = serde_json::json!({ "latent": live, "mode": "add", "strength": "4x" });
        let with = |k: &str, v: serde_json::Value| {
            let mut b = serde_json::json!({ "prompt": "The whale", "edits": [edit.clone()] });
            b[k] = v;
            b
        };
        let edit_with = |k: &str, v: serde_json::Value| {
            let mut e = edit.clone();
            if v.is_null() {
                e.as_object_mut().unwrap().remove(k);
            } else {
                e[k] = v;
            }
            with("edits", serde_json::json!([e]))
        };
        let cases = [
            (
                edit_with("latent", 192.into()),
                404,
                "latent 192 does not exist",
            ),
            (edit_with("strength", "NaNx".into()), 400, "finite number"),
            (
                edit_with("strength", "1e38x".into()),
                400,
                "not a finite number",
            ),
            (edit_with("mode", "push".into()), 400, "unknown variant"),
            (edit_with("mode", "ablate".into()), 400, "takes no strength"),
            (
                edit_with("strength", serde_json::Value::Null),
                400,
                "needs a strength",
            ),
            (
                with(
                    "edits",
                    serde_json::json!([{ "latent": 3, "mode": "scale", "strength": "2x" }]),
                ),
                400,
                "plain factor",
            ),
            (
                with("prompt", "word ".repeat(1000).into()),
                400,
                "at most 4096",
            ),
            (with("prompt", "a ".repeat(400).into()), 400, "at most 257"),
            (with("prompt", "  ".into()), 400, "the prompt is empty"),
            (with("max_new_tokens", 0.into()), 400, "max_new_tokens=0"),
            (with("max_new_tokens", 129.into()), 400, "1 to 128"),
            (
                with("edits", serde_json::json!([])),
                400,
                "at least one edit",
            ),
            (
                with("edits", serde_json::json!(vec![edit.clone(); 17])),
                400,
                "at most 16",
            ),
            (with("temperature", (-1).into()), 400, "temperature=-1"),
            (with("top_p", 0.into()), 400, "top_p=0"),
            (
                with("positions", "middle".into()),
                400,
                "positions 'middle'",
            ),
            (with("steps", 3.into()), 400, "unknown field `steps`"),
        ];
        for (body, status, want) in cases {
            let r = steer(addr, &body).await;
            assert_eq!(r.status, status, "{body}: {}", r.body);
            let e = error_of(&r);
            assert!(e.contains(want), "{body}: {e}");
        }
    });
}
