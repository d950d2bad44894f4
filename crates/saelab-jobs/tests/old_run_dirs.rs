//! Run directories written by saelab before its run-directory records had types
//! (`tests/fixtures/old-runs`, see its README) still read, resume, and are what the
//! typed writers write: every record re-written from what was read is the old file,
//! byte for byte but for the last digit of some floats ([`same_text`]: serde_json
//! parses a float to within an ulp; the writers themselves emit the old bytes for the
//! same values, see `saelab_core::rundir`'s tests).

use std::path::{Path, PathBuf};

use saelab_core::rundir::{
    read_json, record_value, write_json, CheckpointExtra, MetricsRecord, RunDir, RunRecord, RunSet,
};
use saelab_core::store::write_npy_f32;
use saelab_core::synth::{generate, SynthConfig};
use saelab_eval::report::read_run;
use saelab_eval::InModelMetrics;
use saelab_jobs::train::{self, RunData};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/old-runs")
}

/// Splits JSON text into its skeleton (numbers outside strings replaced by `#`) and
/// its numbers.
fn skeleton(text: &[u8]) -> (Vec<u8>, Vec<f64>) {
    let (mut out, mut nums) = (Vec::new(), Vec::new());
    let (mut i, mut in_str) = (0, false);
    while i < text.len() {
        let c = text[i];
        if in_str {
            out.push(c);
            if c == b'\\' {
                out.push(text[i + 1]);
                i += 1;
            } else if c == b'"' {
                in_str = false;
            }
        } else if c == b'-' || c.is_ascii_digit() {
            let start = i;
            while i + 1 < text.len() && b"+-.eE0123456789".contains(&text[i + 1]) {
                i += 1;
            }
            let s = std::str::from_utf8(&text[start..=i]).unwrap();
            nums.push(s.parse().unwrap());
            out.push(b'#');
        } else {
            in_str = c == b'"';
            out.push(c);
        }
        i += 1;
    }
    (out, nums)
}

/// Whether two JSON texts are the same but for floats within a few ulps.
fn same_text(a: &[u8], b: &[u8]) -> bool {
    let ((sa, na), (sb, nb)) = (skeleton(a), skeleton(b));
    sa == sb
        && na.len() == nb.len()
        && na
            .iter()
            .zip(&nb)
            .all(|(x, y)| x == y || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs()))
}

#[test]
fn same_text_tells_formats_apart() {
    assert!(same_text(
        b"{\"a-1\": 9.495270727112631}",
        b"{\"a-1\": 9.495270727112633}"
    ));
    assert!(!same_text(b"{\"a\": 1.5}", b"{\"a\": 1.6}"));
    assert!(!same_text(b"{\"a\":1}", b"{\"a\": 1}"));
    assert!(!same_text(b"{\"a2\": 1}", b"{\"a3\": 1}"));
    assert!(!same_text(b"[1, 2]", b"[1, 2, 3]"));
}

fn runs() -> Vec<RunDir> {
    let f = fixtures();
    ["sweep/topk-k2-n16", "sweep/topk-k4-n16", "relu", "stream"]
        .iter()
        .map(|r| RunDir::new(f.join(r)))
        .collect()
}

#[test]
fn metrics_logs_read_and_rewrite_to_the_same_text() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, run) in runs().iter().enumerate() {
        let old = std::fs::read(run.metrics_file()).unwrap();
        let records = run.read_log().unwrap();
        assert_eq!(
            records.len(),
            old.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count(),
            "{}: every line is a train or val record",
            run.path().display()
        );
        assert!(records.iter().any(|r| matches!(r, MetricsRecord::Train(_))));
        assert!(records.iter().any(|r| matches!(r, MetricsRecord::Val(_))));
        let copy = RunDir::new(tmp.path().join(i.to_string()));
        std::fs::create_dir_all(copy.path()).unwrap();
        let mut log = copy.open_log().unwrap();
        for r in &records {
            log.append(r).unwrap();
        }
        drop(log);
        assert!(
            same_text(&std::fs::read(copy.metrics_file()).unwrap(), &old),
            "{}: rewritten log differs",
            run.path().display()
        );
    }
}

#[test]
fn run_records_sweeps_and_checkpoints_rewrite_to_the_same_text() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, run) in runs().iter().enumerate() {
        let rec = run.read_record::<serde_json::Value>().unwrap();
        let data = RunData::from_value(rec.data, &run.run_file()).unwrap();
        let streamed = matches!(data, RunData::Stream { .. });
        assert_eq!(streamed, run.path().ends_with("stream"));
        let copy = RunDir::new(tmp.path().join(i.to_string()));
        copy.create(&RunRecord {
            data,
            sae: rec.sae,
            train: rec.train,
        })
        .unwrap();
        assert!(
            same_text(
                &std::fs::read(copy.run_file()).unwrap(),
                &std::fs::read(run.run_file()).unwrap()
            ),
            "{}: rewritten run.json differs",
            run.path().display()
        );
        // The driver's part of the checkpoint.
        let state: serde_json::Value = read_json(
            &run.checkpoint_dir().join("trainer_state.json"),
            "a trainer state",
        )
        .unwrap();
        let extra: CheckpointExtra = serde_json::from_value(state["extra"].clone()).unwrap();
        assert!(extra.data.is_object());
        assert_eq!(record_value(&extra), state["extra"]);
        assert!(same_text(
            &serde_json::to_vec_pretty(&record_value(&extra)).unwrap(),
            &serde_json::to_vec_pretty(&state["extra"]).unwrap()
        ));
    }
    let sweep = fixtures().join("sweep");
    let set = RunSet::open(&sweep).unwrap();
    assert_eq!(set.names(), ["topk-k2-n16", "topk-k4-n16"]);
    let again = RunSet::new(&tmp.path().join("sweep"), set.names().to_vec()).unwrap();
    again.write_sweep().unwrap();
    assert_eq!(
        std::fs::read(tmp.path().join("sweep/sweep.json")).unwrap(),
        std::fs::read(sweep.join("sweep.json")).unwrap()
    );
    // eval.json is written field by field.
    let eval = RunDir::new(sweep.join("topk-k2-n16")).eval_file();
    let m: InModelMetrics = read_json(&eval, "an in-model evaluation").unwrap();
    write_json(&tmp.path().join("eval.json"), &m).unwrap();
    assert!(same_text(
        &std::fs::read(tmp.path().join("eval.json")).unwrap(),
        &std::fs::read(&eval).unwrap()
    ));
}

#[test]
fn the_report_reads_old_runs() {
    let f = fixtures();
    let s = read_run(&f.join("sweep/topk-k2-n16")).unwrap();
    assert_eq!(
        (s.arch.as_str(), s.sparsity.as_str(), s.d_sae),
        ("topk", "k=2", 16)
    );
    // log_every = 5 over 20 steps; validations every 10 steps and at the end.
    assert_eq!(s.curve.len(), 4);
    assert_eq!(s.curve.last().unwrap().tokens, 2560);
    let last = s.last.unwrap();
    assert_eq!((last.step, last.l0), (20, 2.0));
    assert!(last.fvu > 0.0 && last.fvu < 1.0);
    assert!(s.in_model.is_some() && s.log10_density.is_some());
    let r = read_run(&f.join("relu")).unwrap();
    assert_eq!((r.arch.as_str(), r.sparsity.as_str()), ("relu", "λ=5"));
    assert!(r.in_model.is_none() && r.last.is_some());
}

/// The synthetic activations the fixture runs were trained on (`saelab synth --rows
/// 3000 --heldout-rows 500 --d 8 --features 32 --avg-active 2`).
fn synth_train(dir: &Path) -> PathBuf {
    let cfg = SynthConfig {
        d: 8,
        n_features: 32,
        avg_active: 2.0,
        freq_exponent: 0.5,
        noise_std: 0.01,
        seed: 0,
        ..SynthConfig::default()
    };
    let path = dir.join("train.npy");
    write_npy_f32(&path, &generate(&cfg, 3000).unwrap().x).unwrap();
    path
}

#[test]
fn a_finished_old_sweep_resumes_to_the_same_sae() {
    let tmp = tempfile::tempdir().unwrap();
    let acts = synth_train(tmp.path());
    let sweep = tmp.path().join("sweep");
    copy_dir(&fixtures().join("sweep"), &sweep);
    for name in ["topk-k2-n16", "topk-k4-n16"] {
        // Point the run at the regenerated activations.
        let run = sweep.join(name).join("run.json");
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&run).unwrap()).unwrap();
        v["data"]["paths"] = serde_json::json!([acts]);
        std::fs::write(&run, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        std::fs::remove_dir_all(sweep.join(name).join("sae")).unwrap();
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut steps = 0;
    let out = train::resume(&sweep, &stop, &mut |e| {
        if let saelab_jobs::Event::Fit(saelab_core::fit::Event::Step { .. }) = e {
            steps += 1;
        }
    })
    .unwrap();
    assert_eq!(steps, 0, "the runs were finished");
    assert_eq!(out.set.names(), ["topk-k2-n16", "topk-k4-n16"]);
    for name in ["topk-k2-n16", "topk-k4-n16"] {
        // The same SAE, value for value (the file's bytes may differ: the tensor-file
        // writer orders the header's keys, which the format leaves free).
        let sae =
            |root: &Path| saelab_core::format::load_sae(&root.join(name).join("sae")).unwrap();
        let (new, old) = (sae(&sweep), sae(&fixtures().join("sweep")));
        assert!(new.params == old.params, "{name}: other weights");
        assert_eq!(new.cfg, old.cfg, "{name}: another config");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}
