//! The scoring arithmetic end to end with a scripted judge: the prompts the detection
//! scorer builds, replies written by hand for them (some right, some wrong, one
//! malformed), and the balanced accuracy, F1 and AUROC worked out by hand from them.

use std::sync::Mutex;

use saelab_interp::sample::{Example, Examples};
use saelab_interp::score::classify::{apply, prompts, ClassifyConfig, Task};
use saelab_interp::score::ScoreSummary;
use saelab_llm::{ChatClient, ChatReply, ChatRequest, LlmError, Result, TokenLogprobs};

/// Answers each request with the next scripted reply, recording the requests.
struct Scripted {
    replies: Mutex<Vec<Result<ChatReply>>>,
    seen: Mutex<Vec<ChatRequest>>,
}

impl ChatClient for Scripted {
    fn model_id(&self) -> String {
        "scripted".into()
    }

    fn complete(&self, req: &ChatRequest) -> Result<ChatReply> {
        self.seen.lock().unwrap().push(req.clone());
        self.replies.lock().unwrap().remove(0)
    }
}

fn reply(content: &str, p1: Option<&[f32]>) -> Result<ChatReply> {
    // With `p1`, the digit tokens of the list carry P("1") = p1[k], P("0") = 1 − p1[k].
    let logprobs = p1.map(|ps| {
        let mut toks = vec![TokenLogprobs {
            token: "[".into(),
            logprob: 0.0,
            top: vec![],
        }];
        for (k, d) in content
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .enumerate()
        {
            toks.push(TokenLogprobs {
                token: d.trim().into(),
                logprob: 0.0,
                top: vec![("1".into(), ps[k].ln()), ("0".into(), (1.0 - ps[k]).ln())],
            });
        }
        toks
    });
    Ok(ChatReply {
        content: content.into(),
        logprobs,
        finish_reason: "stop".into(),
    })
}

/// 6 activating test examples and 9 non-activating ones, 15 items in 3 prompts of 5.
fn examples() -> (Examples, Vec<String>) {
    let vocab: Vec<String> = (0..50).map(|i| format!(" w{i}")).collect();
    let e = |i: u32, active: bool| Example {
        context: i,
        start: 0,
        tokens: vec![i, i + 1, i + 2],
        acts: if active {
            vec![0.0, 3.0, 0.0]
        } else {
            vec![0.0; 3]
        },
        quantile: if active { 0 } else { -1 },
    };
    let ex = Examples {
        latent: 5,
        max: 3.0,
        activating_windows: 6,
        train: vec![],
        test: (0..6).map(|i| e(i, true)).collect(),
        non_activating: (10..19).map(|i| e(i, false)).collect(),
        similar_non_activating: 0,
    };
    (ex, vocab)
}

#[test]
fn detection_metrics_equal_hand_computed_values_and_malformed_replies_count() {
    let (ex, vocab) = examples();
    let cfg = ClassifyConfig::default();
    let p = prompts(Task::Detection, "w-ish words", &ex, &vocab, &cfg);
    assert_eq!((p.requests.len(), p.items.len()), (3, 15));
    // The judge: prompt 0 answered exactly right; prompt 1 with its first answer
    // flipped; prompt 2 malformed (no closing bracket).
    let truth: Vec<bool> = p.items.iter().map(|i| i.activating).collect();
    let list = |bits: Vec<bool>| {
        format!(
            "[{}]",
            bits.iter()
                .map(|&b| if b { "1" } else { "0" })
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let right0 = list(truth[0..5].to_vec());
    let mut wrong1 = truth[5..10].to_vec();
    wrong1[0] = !wrong1[0];
    let judge = Scripted {
        replies: Mutex::new(vec![
            reply(&right0, None),
            reply(&list(wrong1.clone()), None),
            reply("[1, 0", None),
        ]),
        seen: Mutex::new(vec![]),
    };
    let replies = judge.complete_many(&p.requests);
    let (items, failed) = apply(p.clone(), &replies);
    assert_eq!(failed, 1);
    // Each request states the description, five numbered excerpts and the count.
    let seen = judge.seen.lock().unwrap();
    let body = &seen[0].messages[1].content;
    assert!(
        body.starts_with("Description: w-ish words\n\nExcerpt 1: "),
        "{body}"
    );
    assert!(body.ends_with("Answer with a list of 5 numbers."), "{body}");
    assert_eq!((seen[0].temperature, seen[0].top_logprobs), (0.0, None));

    // By hand: items 0..10 are scored, one of them (item 5) wrongly.
    let (mut tp, mut tn, mut fp, mut fn_) = (0, 0, 0, 0);
    for (k, &t) in truth[..10].iter().enumerate() {
        let pred = if k == 5 { !t } else { t };
        match (t, pred) {
            (true, true) => tp += 1,
            (false, false) => tn += 1,
            (false, true) => fp += 1,
            (true, false) => fn_ += 1,
        }
    }
    let s = ScoreSummary::of(&items, true);
    assert_eq!((s.items, s.failed), (15, 5));
    let c = s.confusion.unwrap();
    assert_eq!((c.tp, c.tn, c.fp, c.fn_), (tp, tn, fp, fn_));
    let pos = (tp + fn_) as f64;
    let neg = (tn + fp) as f64;
    let bal = 0.5 * (tp as f64 / pos + tn as f64 / neg);
    assert!((s.balanced_accuracy.unwrap() - bal).abs() < 1e-12);
    let prec = if tp + fp == 0 {
        0.0
    } else {
        tp as f64 / (tp + fp) as f64
    };
    let rec = tp as f64 / pos;
    let f1 = if prec + rec == 0.0 {
        0.0
    } else {
        2.0 * prec * rec / (prec + rec)
    };
    assert!((s.f1.unwrap() - f1).abs() < 1e-12);
    assert_eq!(s.auroc, None, "no probabilities without log-probabilities");
    assert!(items[10..]
        .iter()
        .all(|i| i.prediction.is_none() && i.correct.is_none()));
}

#[test]
fn auroc_comes_from_the_answers_log_probabilities() {
    let (ex, vocab) = examples();
    let cfg = ClassifyConfig {
        per_prompt: 15,
        top_logprobs: Some(5),
        ..Default::default()
    };
    let p = prompts(Task::Detection, "w-ish words", &ex, &vocab, &cfg);
    assert_eq!(p.requests.len(), 1);
    assert_eq!(p.requests[0].top_logprobs, Some(5));
    // P("1") = 0.9 for the activating items but one (0.2), 0.3 for the others but one
    // (0.95): of 6 × 9 pairs, the 0.2 positive loses to 1 + 8 negatives... by hand:
    // positive 0.9 (×5) beats every negative but the 0.95 one: 5 × 8; positive 0.2
    // beats none of the 0.3s nor the 0.95: 0. AUROC = 40 / 54.
    let truth: Vec<bool> = p.items.iter().map(|i| i.activating).collect();
    let (mut first_pos, mut first_neg) = (true, true);
    let probs: Vec<f32> = truth
        .iter()
        .map(|&t| match (t, first_pos, first_neg) {
            (true, true, _) => {
                first_pos = false;
                0.2
            }
            (true, false, _) => 0.9,
            (false, _, true) => {
                first_neg = false;
                0.95
            }
            (false, _, false) => 0.3,
        })
        .collect();
    let content = format!(
        "[{}]",
        probs
            .iter()
            .map(|&q| if q > 0.5 { "1" } else { "0" })
            .collect::<Vec<_>>()
            .join(", ")
    );
    let judge = Scripted {
        replies: Mutex::new(vec![reply(&content, Some(&probs))]),
        seen: Mutex::new(vec![]),
    };
    let (items, failed) = apply(p.clone(), &judge.complete_many(&p.requests));
    assert_eq!(failed, 0);
    let s = ScoreSummary::of(&items, true);
    assert!(
        (s.auroc.unwrap() - 40.0 / 54.0).abs() < 1e-9,
        "{:?}",
        s.auroc
    );
    // The answers: 5 TP, 1 FN, 8 TN, 1 FP.
    let c = s.confusion.unwrap();
    assert_eq!((c.tp, c.fn_, c.tn, c.fp), (5, 1, 8, 1));
    assert!((s.balanced_accuracy.unwrap() - 0.5 * (5.0 / 6.0 + 8.0 / 9.0)).abs() < 1e-12);
}

#[test]
fn a_failed_request_is_a_counted_failure() {
    let (ex, vocab) = examples();
    let p = prompts(
        Task::Fuzzing,
        "w-ish words",
        &ex,
        &vocab,
        &ClassifyConfig::default(),
    );
    let replies: Vec<Result<ChatReply>> = p
        .requests
        .iter()
        .map(|_| {
            Err(LlmError::Timeout {
                url: "http://127.0.0.1:9/v1".into(),
                secs: 1,
            })
        })
        .collect();
    let (items, failed) = apply(p, &replies);
    assert_eq!(failed, 3);
    let s = ScoreSummary::of(&items, true);
    assert_eq!((s.failed, s.balanced_accuracy), (15, None));
}
