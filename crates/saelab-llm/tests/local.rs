//! `LocalClient` on the real SmolLM2-135M-Instruct (skipped with a message without it,
//! failing under CI): a batch is one batched generation whose replies equal the
//! requests run one at a time; log-probabilities when asked; a prompt too long for the
//! context fails alone.

use std::sync::OnceLock;
use std::time::Instant;

use saelab_llm::{ChatClient, ChatMessage, ChatRequest, LlmError, LocalClient, LocalConfig};
use saelab_testkit::{real_data, serial};

fn client() -> Option<&'static LocalClient> {
    static C: OnceLock<LocalClient> = OnceLock::new();
    let path = real_data()?.model;
    Some(C.get_or_init(|| LocalClient::load(&LocalConfig::new(&path)).expect("load SmolLM2")))
}

fn requests() -> Vec<ChatRequest> {
    vec![
        ChatRequest::greedy(
            vec![ChatMessage::user("What is the capital of France?")],
            24,
        ),
        ChatRequest::greedy(
            vec![
                ChatMessage::system("You answer in one word."),
                ChatMessage::user("Name a colour of the sky."),
            ],
            24,
        ),
        ChatRequest {
            top_logprobs: Some(4),
            ..ChatRequest::greedy(
                vec![ChatMessage::user(
                    "Write a sentence about whales and the sea.",
                )],
                24,
            )
        },
    ]
}

#[test]
fn a_batch_gives_each_request_what_it_gets_alone() {
    let Some(c) = client() else { return };
    let _guard = serial();
    let id = c.model_id();
    assert!(
        id.starts_with("local:SmolLM2-135M-Instruct.Q4_1.gguf#") && id.len() == 6 + 31 + 1 + 16,
        "{id}"
    );
    let reqs = requests();
    let t0 = Instant::now();
    let batched = c.complete_many(&reqs);
    let t_batch = t0.elapsed();
    let t0 = Instant::now();
    let alone: Vec<_> = reqs.iter().map(|r| c.complete(r)).collect();
    let t_alone = t0.elapsed();
    for (i, (b, a)) in batched.iter().zip(&alone).enumerate() {
        let (b, a) = (b.as_ref().unwrap(), a.as_ref().unwrap());
        assert_eq!(b, a, "request {i}");
        assert!(!b.content.trim().is_empty(), "request {i}: empty reply");
        assert!(["stop", "length"].contains(&b.finish_reason.as_str()));
    }
    assert!(batched[0].as_ref().unwrap().content.contains("Paris"));
    // Log-probabilities only where asked, one per generated token, the top 4 most
    // likely first and the greedy token the most likely.
    assert!(batched[0].as_ref().unwrap().logprobs.is_none());
    let scored = batched[2].as_ref().unwrap();
    let lp = scored.logprobs.as_ref().unwrap();
    assert!(!lp.is_empty() && lp.len() <= 24);
    let text: String = lp.iter().map(|t| t.token.as_str()).collect();
    assert_eq!(text, scored.content);
    for t in lp {
        assert_eq!(t.top.len(), 4);
        assert_eq!(t.top[0].0, t.token);
        assert!((t.top[0].1 - t.logprob).abs() < 1e-6);
        let mass: f32 = t.top.iter().map(|(_, l)| l.exp()).sum();
        assert!(mass <= 1.0 + 1e-4 && t.logprob <= 0.0, "{t:?}");
    }
    eprintln!("3 greedy requests × ≤ 24 tokens: batched {t_batch:?}, one at a time {t_alone:?}");
}

#[test]
fn a_prompt_too_long_for_the_context_fails_alone() {
    let Some(c) = client() else { return };
    let _guard = serial();
    let long = "whale ".repeat(c.context_length());
    let reqs = vec![
        ChatRequest::greedy(vec![ChatMessage::user(long)], 4),
        ChatRequest::greedy(vec![ChatMessage::user("Hi")], 4),
        ChatRequest::greedy(vec![], 4),
        ChatRequest {
            temperature: f32::NAN,
            ..ChatRequest::greedy(vec![ChatMessage::user("Hi")], 4)
        },
    ];
    let out = c.complete_many(&reqs);
    match &out[0] {
        Err(LlmError::Invalid(m)) => assert!(m.contains("8192-token context"), "{m}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    let ok = out[1].as_ref().unwrap();
    assert_eq!(ok.finish_reason, "length");
    assert!(matches!(&out[2], Err(LlmError::Invalid(m)) if m.contains("no messages")));
    assert!(matches!(&out[3], Err(LlmError::Invalid(m)) if m.contains("temperature")));
    // Sampled replies are seeded: the same request, the same reply.
    let hot = ChatRequest {
        temperature: 0.9,
        ..ChatRequest::greedy(vec![ChatMessage::user("Tell me a word.")], 8)
    };
    let twice = c.complete_many(&[hot.clone(), hot]);
    assert_eq!(twice[0].as_ref().unwrap(), twice[1].as_ref().unwrap());
}

#[test]
fn a_teacher_forced_reply_scores_as_the_generation_that_wrote_it() {
    let Some(c) = client() else { return };
    let _guard = serial();
    assert!(c.can_score_replies());
    // Two requests sharing their instructions (the shared prefix runs once).
    let system = ChatMessage::system(
        "You are a helpful assistant. Answer every question in one short sentence, \
         without lists and without code.",
    );
    let reqs: Vec<ChatRequest> = ["What is the capital of France?", "Why is the sea salty?"]
        .iter()
        .map(|q| ChatRequest {
            top_logprobs: Some(5),
            ..ChatRequest::greedy(vec![system.clone(), ChatMessage::user(*q)], 16)
        })
        .collect();
    let generated = c.complete_many(&reqs);
    let forced: Vec<ChatRequest> = reqs
        .iter()
        .zip(&generated)
        .map(|(r, g)| {
            let mut r = r.clone();
            r.messages
                .push(ChatMessage::assistant(g.as_ref().unwrap().content.clone()));
            r
        })
        .collect();
    let scored = c.score_replies(&forced);
    let mut worst = 0f32;
    for (g, s) in generated.iter().zip(&scored) {
        let (g, s) = (g.as_ref().unwrap(), s.as_ref().unwrap());
        assert_eq!(s.finish_reason, "teacher_forced");
        assert_eq!(s.content, g.content);
        let (gl, sl) = (g.logprobs.as_ref().unwrap(), s.logprobs.as_ref().unwrap());
        let tokens =
            |l: &[saelab_llm::TokenLogprobs]| l.iter().map(|t| t.token.clone()).collect::<Vec<_>>();
        assert_eq!(tokens(gl), tokens(sl), "the reply re-encodes to its tokens");
        for (a, b) in gl.iter().zip(sl) {
            worst = worst.max((a.logprob - b.logprob).abs());
            let names = |t: &saelab_llm::TokenLogprobs| {
                t.top.iter().map(|x| x.0.clone()).collect::<Vec<_>>()
            };
            assert_eq!(
                names(a),
                names(b),
                "the same top alternatives at {:?}",
                a.token
            );
            for (x, y) in a.top.iter().zip(&b.top) {
                worst = worst.max((x.1 - y.1).abs());
            }
        }
    }
    assert!(
        worst < 1e-3,
        "teacher forcing vs generation: max |Δ logprob| = {worst}"
    );
    eprintln!("teacher-forced scores of 2 generated replies: max |Δ logprob| = {worst:.2e}");
    // Refusals, each alone.
    let bad = [
        reqs[0].clone(),
        ChatRequest {
            messages: vec![ChatMessage::user("hi"), ChatMessage::assistant("")],
            ..reqs[0].clone()
        },
    ];
    let r = c.score_replies(&bad);
    let err = |i: usize| {
        r[i].as_ref()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(err(0).contains("must be the last message"), "{}", err(0));
    assert!(err(1).contains("empty"), "{}", err(1));
}
