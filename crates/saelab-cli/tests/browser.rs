//! The dashboard in a real browser: Debian's `chromium`, driven headless through
//! `chromedriver` by the `fantoccini` WebDriver client, against `saelab serve` on
//! 127.0.0.1, on a small SAE trained here on the real SmolLM2 model
//! (`saelab train --model`, streaming) and a features folder made by `saelab features`.
//!
//! WebDriver from Rust rather than a Node script: the checks compare what the browser
//! shows with the features records and with `saelab encode` in the same test, in the
//! same language as the rest of the suite, and the only browser pieces needed are the
//! two Debian packages that `scripts/setup-browser.sh` installs. The browser is started
//! with the flags this closed network needs (headless, no sandbox as root, no
//! background networking, a fresh profile).
//!
//! It checks, on the feature page of one latent (the rarest active at ≥ 100 positions): at
//! least 20 context rows, each row's marked token's `data-act` equal to the stats
//! record's value (1e-3), 50 histogram bars summing to the latent's non-zero count, the
//! 10 + 10 logit rows (ids, values, token texts) equal to the record; in the prompt
//! explorer, typing a fixed sentence gives per-token values of a latent equal (1e-4) to
//! `saelab encode --latent I --text …`; in the feature page's steering panel, a strong
//! add (`raw:200`, 8 new tokens) gives an unsteered and a steered continuation, side by
//! side, that differ. The explanations of `saelab autointerp`, written into the features
//! folder with `merge_explanations` before the server starts (one of the latent, HTML
//! inside it, one of another latent): the index's explanation search box, typed into
//! with a word of the text in other case, lists only the latent, linked; its page shows
//! the text as text (not markup) and each score with its shuffled control; the same
//! search in the static export (`saelab export-html`, opened from `file://`). It saves a
//! screenshot of the index, the explanation search, the feature page, the steering
//! panel and the prompt explorer into `$SAELAB_SCREENSHOTS` (default
//! `target/screenshots`; the ones in `docs/` were made with
//! `SAELAB_SCREENSHOTS=docs/screenshots`).
//!
//! Without the real data or the browser it skips with a message, and fails instead
//! when `CI` or `SAELAB_REQUIRE_DATA` is set (as `scripts/test.sh` does).

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{saelab_ok, SAELAB};
use fantoccini::{ClientBuilder, Locator};
use saelab_features::explanations::{merge_explanations, ExplanationRecord, ExplanationScore};
use saelab_features::Features;
use saelab_testkit::cli::{p, stdout};
use saelab_testkit::data::{data_required, workspace_root};
use saelab_testkit::real_data;
use saelab_web::site::display_token;

const SENTENCE: &str = "The whale rose from the sea, and Captain Ahab called his men to the boats.";
/// The explanation of the page's latent: markup in it must be shown as text.
const EXPLANATION: &str = "Sea words: \" whale\", \" ship\" <i>not markup</i> & more (marker qz7)";

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `(chromium, chromedriver)`, or `None` after a skip message; panics when required.
fn browser() -> Option<(PathBuf, PathBuf)> {
    let path = |var: &str, default: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(default), PathBuf::from)
    };
    let chromium = path("SAELAB_CHROMIUM", "/usr/bin/chromium");
    let driver = path("SAELAB_CHROMEDRIVER", "/usr/bin/chromedriver");
    for b in [&chromium, &driver] {
        if !b.is_file() {
            let what = format!(
                "{} is absent (run scripts/setup-browser.sh: Debian's chromium and \
                 chromium-driver)",
                b.display()
            );
            if data_required() {
                panic!(
                    "the browser test is required (CI or SAELAB_REQUIRE_DATA is set), but {what}"
                );
            }
            eprintln!("skipping: {what}; set SAELAB_REQUIRE_DATA=1 to fail instead");
            return None;
        }
    }
    Some((chromium, driver))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{what} did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `saelab serve` with `args` on a free port: the process and the address it printed.
fn serve(args: &[&str]) -> (Killed, String) {
    let mut c = SAELAB.cmd(args);
    c.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = c.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let child = Killed(child);
    let url = line
        .find("http://")
        .and_then(|at| line[at..].split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    (child, url)
}

fn f32_of(v: &serde_json::Value) -> f32 {
    v.as_str().unwrap().parse().unwrap()
}

fn save(dir: &Path, name: &str, png: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    std::fs::write(dir.join(name), png).unwrap();
}

#[test]
fn dashboard_in_headless_chromium_matches_the_stats_and_saelab_encode() {
    let Some(data) = real_data() else { return };
    let Some((chromium, driver)) = browser() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (m, c) = (p(&data.model), p(&data.corpus));
    let run = tmp.path().join("run");
    saelab_ok(&[
        "train",
        "--model",
        m,
        "--hook",
        "blocks.3.hook_resid_post",
        "--corpus",
        c,
        "--ctx-len",
        "64",
        "--batch-contexts",
        "8",
        "--window-contexts",
        "32",
        "--val-tokens",
        "512",
        "--arch",
        "topk",
        "--k",
        "16",
        "--expansion",
        "2",
        "--tokens",
        "40960",
        "--batch-size",
        "256",
        "--lr",
        "2e-3",
        "--out",
        p(&run),
    ]);
    let feats_dir = tmp.path().join("features");
    saelab_ok(&[
        "features",
        "--sae",
        p(&run),
        "--model",
        m,
        "--corpus",
        c,
        "--tokens",
        "8192",
        "--ctx-len",
        "64",
        "--out",
        p(&feats_dir),
    ]);
    let feats = Features::open(&feats_dir).unwrap();
    let vocab = feats.vocab().unwrap();
    // The rarest latent with a full top-20 that is active at 100 positions or more (so
    // that the histogram holds more than the rows shown).
    let latent = (0..feats.n_latents())
        .map(|i| feats.latent(i).unwrap())
        .filter(|r| r.top.len() >= 20 && r.count >= 100)
        .min_by(|a, b| a.count.cmp(&b.count).then(a.latent.cmp(&b.latent)))
        .expect("a latent active at 100 positions");
    let i = latent.latent;
    // What `saelab autointerp` would leave in the folder: an explanation of latent i
    // with two scores (one missing its value), and one of another latent.
    let other = (i + 1) % feats.n_latents() as u32;
    let score = |scorer: &str, metric: &str, value, shuffled, failed| ExplanationScore {
        scorer: scorer.into(),
        metric: metric.into(),
        value,
        shuffled,
        baseline: 0.5,
        failed,
    };
    merge_explanations(
        &feats_dir,
        vec![
            ExplanationRecord {
                latent: i,
                explainer: "llm:local:browser-test.gguf#00000000".into(),
                explanation: EXPLANATION.into(),
                source: "runs/autointerp/browser".into(),
                scores: vec![
                    score("embedding", "auroc", Some(0.612), Some(0.48), 0),
                    score("detection", "balanced_accuracy", None, Some(0.5), 4),
                ],
            },
            ExplanationRecord {
                latent: other,
                explainer: "token-set".into(),
                explanation: "\" unrelated\", \" filler\"".into(),
                source: "runs/autointerp/browser".into(),
                scores: vec![score("embedding", "auroc", Some(0.5), Some(0.52), 0)],
            },
        ],
    )
    .unwrap();

    let (_server, url) = serve(&[
        "serve",
        "--features",
        p(&feats_dir),
        "--sae",
        p(&run),
        "--model",
        m,
        "--port",
        "0",
    ]);
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "serve must bind loopback by default: {url}"
    );
    let port = free_port();
    let _driver = Killed(
        Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port, "chromedriver");
    let profile = tmp.path().join("chromium-profile");
    std::fs::create_dir_all(&profile).unwrap();
    let shots = std::env::var_os("SAELAB_SCREENSHOTS")
        .map(|d| workspace_root().join(d))
        .unwrap_or_else(|| workspace_root().join("target/screenshots"));

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                    format!("--user-data-dir={}", profile.display()),
                    "--window-size=1280,1000",
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("chromedriver starts a headless chromium");

        // The index.
        client.goto(&url).await.unwrap();
        client.wait().for_element(Locator::Css("#latents tbody tr")).await.unwrap();
        save(&shots, "index.png", &client.screenshot().await.unwrap());

        // The explanation search: a word of latent i's text, in other case, typed into
        // the index's box; only latent i is listed, linked to its page.
        let t0 = Instant::now();
        let search = client.find(Locator::Css("#explain-search")).await.unwrap();
        search.send_keys("QZ7").await.unwrap();
        client.find(Locator::Css("#explain-run")).await.unwrap().click().await.unwrap();
        client
            .wait()
            .for_element(Locator::Css("#explanation-hits tbody tr[data-latent]"))
            .await
            .unwrap();
        let hits = client
            .execute(
                "return [...document.querySelectorAll('#explanation-hits tbody tr')].map(r => ({
                   latent: r.dataset.latent, href: r.querySelector('a').getAttribute('href'),
                   text: r.querySelector('.expl-text').textContent,
                   score: r.cells[3].textContent,
                   shown: r.getBoundingClientRect().height > 0 }));",
                vec![],
            )
            .await
            .unwrap();
        let hits = hits.as_array().unwrap();
        assert_eq!(hits.len(), 1, "{hits:?}");
        let h = &hits[0];
        assert_eq!(h["latent"], i.to_string());
        assert_eq!(h["href"], format!("/latent/{i}"));
        assert_eq!(h["text"], EXPLANATION);
        assert_eq!(h["score"], "embedding auroc 0.612 (shuffled 0.480)");
        assert!(h["shown"].as_bool().unwrap(), "a hidden hit");
        save(&shots, "explanations.png", &client.screenshot().await.unwrap());
        // Its link leads to the latent's page, whose Explanations section shows the text
        // as text and each score beside its shuffled control.
        client
            .find(Locator::Css("#explanation-hits tbody a"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        client.wait().for_element(Locator::Css("#explanations .expl")).await.unwrap();
        let shown = client
            .execute(
                "const s = document.getElementById('explanations');
                 return { url: location.pathname,
                   markup: s.querySelectorAll('.expl-text i').length,
                   records: [...s.querySelectorAll('.expl')].map(e => ({
                     explainer: e.dataset.explainer,
                     text: e.querySelector('.expl-text').textContent,
                     shown: e.getBoundingClientRect().height > 0,
                     scores: [...e.querySelectorAll('table.scores tbody tr')].map(r => ({
                       scorer: r.dataset.scorer, value: r.dataset.value, verdict: r.dataset.verdict,
                       cells: [...r.cells].map(c => c.textContent) })) })) };",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(shown["url"], format!("/latent/{i}"));
        assert_eq!(shown["markup"], 0, "the explanation's <i> became markup");
        let recs = shown["records"].as_array().unwrap();
        assert_eq!(recs.len(), 1, "{shown}");
        assert_eq!(recs[0]["text"], EXPLANATION);
        assert!(recs[0]["shown"].as_bool().unwrap());
        let scores = recs[0]["scores"].as_array().unwrap();
        assert_eq!(scores.len(), 2);
        assert_eq!(
            scores[0]["cells"],
            serde_json::json!(["embedding", "auroc", "0.612", "0.480", "+0.132 ▲", "0.500", "0"])
        );
        assert_eq!((scores[0]["value"].as_str(), scores[0]["verdict"].as_str()), (Some("0.612"), Some("better")));
        assert_eq!(
            scores[1]["cells"],
            serde_json::json!(["detection", "balanced_accuracy", "—", "0.500", "—", "0.500", "4"])
        );
        eprintln!(
            "explanation search: 1 hit for \"QZ7\", latent {i}'s page shows its text and 2 \
             scores, in {:.1?}",
            t0.elapsed()
        );

        // The feature page.
        client.goto(&format!("{url}latent/{i}")).await.unwrap();
        client.wait().for_element(Locator::Css("#top .ctx")).await.unwrap();
        let page = client
            .execute(
                "const rows = [...document.querySelectorAll('#top .ctx')].map(r => ({
                   seq: +r.dataset.seq, pos: +r.dataset.pos, value: r.dataset.value,
                   act: r.querySelector('.t.q').dataset.act,
                   shown: r.getBoundingClientRect().height > 0 }));
                 const bars = [...document.querySelectorAll('#histogram rect.bar')]
                   .map(b => +b.dataset.count);
                 const table = id => [...document.querySelectorAll('#' + id + ' tbody tr')]
                   .map(t => ({ id: +t.dataset.tokenId, value: t.dataset.value,
                                text: t.querySelector('.chip').textContent }));
                 return { rows, bars, top: table('logits-top'), bottom: table('logits-bottom') };",
                vec![],
            )
            .await
            .unwrap();
        let rows = page["rows"].as_array().unwrap();
        assert!(rows.len() >= 20, "{} context rows", rows.len());
        assert_eq!(rows.len(), latent.top.len());
        let mut max_diff = 0f32;
        for (r, s) in rows.iter().zip(&latent.top) {
            assert!(r["shown"].as_bool().unwrap(), "a hidden row");
            assert_eq!((r["seq"].as_u64().unwrap(), r["pos"].as_u64().unwrap()), (s.seq as u64, s.pos as u64));
            let d = (f32_of(&r["act"]) - s.value).abs();
            assert!(d <= 1e-3, "row {:?}: data-act {} vs {}", (s.seq, s.pos), r["act"], s.value);
            max_diff = max_diff.max(d);
        }
        let bars: Vec<u64> = page["bars"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap()).collect();
        assert_eq!(bars.len(), 50);
        assert_eq!(bars.iter().sum::<u64>(), latent.count);
        for (id, want) in [("top", &latent.logits.top), ("bottom", &latent.logits.bottom)] {
            let got = page[id].as_array().unwrap();
            assert_eq!(got.len(), 10, "{id}");
            for (g, w) in got.iter().zip(want.iter()) {
                assert_eq!(g["id"].as_u64().unwrap(), w.token as u64);
                assert_eq!(f32_of(&g["value"]), w.value);
                assert_eq!(g["text"].as_str().unwrap(), display_token(&vocab[w.token as usize]));
            }
        }
        eprintln!(
            "feature page of latent {i}: {} rows, max |data-act - stats| = {max_diff:e}, \
             histogram {} bars summing to {}",
            rows.len(),
            bars.len(),
            latent.count
        );
        client.set_window_size(1280, 2200).await.unwrap();
        save(&shots, "feature.png", &client.screenshot().await.unwrap());
        client.set_window_size(1280, 1000).await.unwrap();

        // The steering panel of the same page: a strong add on this live latent, 8 new
        // tokens, the unsteered and steered continuations side by side.
        let t0 = Instant::now();
        let prompt = client.find(Locator::Css("#steer-prompt")).await.unwrap();
        prompt.send_keys("The whale rose from the sea, and").await.unwrap();
        let mode = client.find(Locator::Css("#steer-mode")).await.unwrap();
        mode.select_by_value("add").await.unwrap();
        let strength = client.find(Locator::Css("#steer-strength")).await.unwrap();
        strength.clear().await.unwrap();
        strength.send_keys("raw:200").await.unwrap();
        let tokens = client.find(Locator::Css("#steer-tokens")).await.unwrap();
        tokens.clear().await.unwrap();
        tokens.send_keys("8").await.unwrap();
        client.find(Locator::Css("#steer-run")).await.unwrap().click().await.unwrap();
        client
            .wait()
            .at_most(Duration::from_secs(120))
            .for_element(Locator::Css(
                "#steer-out[data-state='done'], #steer-out[data-state='error']",
            ))
            .await
            .unwrap();
        let steered = client
            .execute(
                "const c = id => { const b = document.getElementById(id);
                   return { text: b.querySelector('.gen').textContent, tokens: +b.dataset.tokens,
                            finish: b.dataset.finish,
                            shown: b.getBoundingClientRect().height > 0 }; };
                 const out = document.getElementById('steer-out');
                 return { state: out.dataset.state,
                          status: document.getElementById('steer-status').textContent,
                          edits: document.getElementById('steer-edits').textContent,
                          unsteered: out.dataset.state === 'done' ? c('steer-unsteered') : null,
                          steered: out.dataset.state === 'done' ? c('steer-steered') : null };",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(steered["state"], "done", "steering: {}", steered["status"]);
        for side in ["unsteered", "steered"] {
            let c = &steered[side];
            assert!(c["shown"].as_bool().unwrap(), "{side}: not shown");
            let n = c["tokens"].as_u64().unwrap();
            assert!(n == 8 || (c["finish"] == "stop" && n < 8), "{side}: {c}");
            assert!(n == 0 || !c["text"].as_str().unwrap().is_empty(), "{side}: {c}");
        }
        assert_ne!(
            steered["unsteered"]["text"], steered["steered"]["text"],
            "adding 200 × the decoder row of latent {i} changed nothing"
        );
        let edits = steered["edits"].as_str().unwrap();
        assert!(edits.contains(&format!("latent #{i}: add 200.000")), "{edits}");
        eprintln!(
            "steering panel, latent {i} add raw:200: unsteered {} / steered {} in {:.1?}",
            steered["unsteered"]["text"],
            steered["steered"]["text"],
            t0.elapsed()
        );
        client
            .execute("document.getElementById('steer').scrollIntoView();", vec![])
            .await
            .unwrap();
        save(&shots, "steer.png", &client.screenshot().await.unwrap());

        // The prompt explorer: the latent most active on the sentence (as the server
        // reports it), then the page, typed into, against `saelab encode`.
        client.goto(&format!("{url}prompt")).await.unwrap();
        let probe = client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 fetch('/api/prompt', { method: 'POST', headers: { 'content-type': 'application/json' },
                   body: JSON.stringify({ text: arguments[0], top: 1 }) })
                   .then(r => r.json()).then(done);",
                vec![serde_json::json!(SENTENCE)],
            )
            .await
            .unwrap();
        let j = probe["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["top"].as_array().unwrap().first().cloned())
            .max_by(|a, b| a["value"].as_f64().unwrap().total_cmp(&b["value"].as_f64().unwrap()))
            .expect("some latent fires on the sentence")["latent"]
            .as_u64()
            .unwrap();
        client.goto(&format!("{url}prompt?latent={j}")).await.unwrap();
        let text = client.find(Locator::Css("#prompt-text")).await.unwrap();
        text.send_keys(SENTENCE).await.unwrap();
        client.find(Locator::Css("#prompt-run")).await.unwrap().click().await.unwrap();
        client
            .wait()
            .at_most(Duration::from_secs(60))
            .for_element(Locator::Css("#prompt-out[data-state='done']"))
            .await
            .unwrap();
        let shown = client
            .execute(
                "return [...document.querySelectorAll('#prompt-tokens .t')]
                   .map(s => ({ id: +s.dataset.tokenId, act: s.dataset.act }));",
                vec![],
            )
            .await
            .unwrap();
        save(&shots, "prompt.png", &client.screenshot().await.unwrap());

        // The static export, opened from file://: its index's script searches the
        // embedded explanations and links latent i's exported page.
        let html = tmp.path().join("html");
        saelab_ok(&["export-html", "--features", p(&feats_dir), "--out", p(&html)]);
        client
            .goto(&format!("file://{}", html.join("index.html").display()))
            .await
            .unwrap();
        let search = client.find(Locator::Css("#explain-search")).await.unwrap();
        search.send_keys("qZ7").await.unwrap();
        client
            .wait()
            .for_element(Locator::Css("#explanation-hits tbody tr[data-latent]"))
            .await
            .unwrap();
        let hits = client
            .execute(
                "return [...document.querySelectorAll('#explanation-hits tbody tr')].map(r => ({
                   href: r.querySelector('a').getAttribute('href'),
                   text: r.querySelector('.expl-text').textContent }));",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(
            hits,
            serde_json::json!([{ "href": format!("latent-{i}.html"), "text": EXPLANATION }])
        );
        client.close().await.unwrap();

        let o = saelab_ok(&[
            "encode", "--sae", p(&run), "--model", m, "--text", SENTENCE, "--latent",
            &j.to_string(), "--json",
        ]);
        let want: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        let want = want["tokens"].as_array().unwrap();
        let shown = shown.as_array().unwrap();
        assert_eq!(shown.len(), want.len());
        let mut max_diff = 0f32;
        for (s, w) in shown.iter().zip(want) {
            assert_eq!(s["id"], w["id"]);
            let d = (f32_of(&s["act"]) - w["value"].as_f64().unwrap() as f32).abs();
            assert!(d <= 1e-4, "token {}: {} vs {}", w["id"], s["act"], w["value"]);
            max_diff = max_diff.max(d);
        }
        assert!(want.iter().any(|w| w["value"].as_f64().unwrap() > 0.0));
        eprintln!(
            "prompt explorer, latent {j}: {} tokens, max |page - saelab encode| = {max_diff:e}",
            want.len()
        );
    });
}
