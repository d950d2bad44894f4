#!/usr/bin/env python3
"""Check a Neuronpedia export against the invariants of its schema (stdlib only).

    python3 scripts/check_neuronpedia.py DIR

DIR is what `saelab export-neuronpedia --out DIR` wrote, or any folder holding either
layout: (A) SAEDashboard's `batch-*.json` files (with `skipped_indexes.json` and
`run_settings.json`), (B) Neuronpedia's bulk-import folders `{model_id}/{source_id}/`
(found anywhere below DIR by their `source.jsonl`). Each invariant that fails prints one
line (the file, the latent or row, what is wrong); the exit status is 1 if any failed,
2 if DIR holds neither layout, 0 otherwise (then a summary line).

Invariants (docs/neuronpedia.md, research notes section 2.4):
- every example: len(tokens) = len(values); 0 <= qualifying_token_index < len(values);
  (B) maxValue, maxValueTokenIndex (first argmax) and minValue recomputed from values;
- the top group comes first, with binMin = binContains = -1 and binMax = the latent's
  max (the largest value of all its examples);
- the interval groups follow in increasing order and tile [0, max]: equal widths on
  the grid 0, w, 2w, ..., max, the top one ending at max, neighbours sharing only an
  endpoint; each example's qualifying value lies in its interval; 0 <= binContains <= 1;
- sum of freq heights = the latent's non-zero count: frac_nonzero x positions where the
  export states the positions (`n_positions` in run_settings.json), and (A) and (B) give
  the same heights; 50 bars, values increasing;
- sum of logits heights = d_vocab (run_settings.json's d_vocab, else 49 152: SmolLM2);
- pos_str / neg_str: 10 distinct tokens, pos_values descending, neg_values ascending;
- (B) maxActApprox = the max of maxValue over the latent's Activation rows;
- (B) every line of each JSONL file has the same keys, every key a Prisma column of its
  table; `index` a string; Activation ids unique; createdAt an ISO datetime;
- (B) explanations/batch-{n}.jsonl.gz (optional, table Explanation): one key set over
  every file; ids unique; each row's `index` that of a Neuron row of the folder, with
  that row's `modelId` and `layer`; `description` a non-empty string; `embedding` null
  or 256 numbers; `authorId` a non-empty string.
"""

import gzip
import json
import math
import os
import re
import signal
import sys

SMOLLM2_VOCAB = 49152
TOL = 1.5e-5  # values are rounded to 5 decimals

# Prisma columns of each table (research notes section 2.2; NP db_models).
COLUMNS = {
    "Neuron": """modelId layer index creatorId createdAt sourceSetName maxActApprox
        hasVector vector vectorLabel vectorDefaultSteerStrength hookName
        topkCosSimIndices topkCosSimValues neuron_alignment_indices
        neuron_alignment_values neuron_alignment_l1 correlated_neurons_indices
        correlated_neurons_pearson correlated_neurons_l1 correlated_features_indices
        correlated_features_pearson correlated_features_l1 neg_str neg_values pos_str
        pos_values frac_nonzero freq_hist_data_bar_heights freq_hist_data_bar_values
        logits_hist_data_bar_heights logits_hist_data_bar_values decoder_weights_dist
        umap_cluster umap_log_feature_sparsity umap_x umap_y""",
    "Activation": """id tokens values modelId layer index maxValue maxValueTokenIndex
        minValue creatorId createdAt binMin binMax binContains qualifyingTokenIndex
        dfaValues dfaTargetIndex dfaMaxValue lossValues logitContributions dataSource
        dataIndex zIndices zValues""",
    "Model": """id instruct creatorId displayNameShort displayName tlensId dimension
        visibility defaultSourceSetName defaultSourceId inferenceEnabled layers
        neuronsPerLayer owner website createdAt updatedAt""",
    "SourceSet": """modelId name creatorId hasDashboards visibility description type
        creatorName urls creatorEmail releaseName defaultOfModelId defaultRange
        defaultShowBreaks showDfa showCorrelated showHeadAttribution showUmap createdAt""",
    "Source": """id modelId setName creatorId hasDashboards inferenceEnabled
        inferenceHosts saelensConfig saelensRelease saelensSaeId hfRepoId hfFolderId
        visibility defaultOfModelId hasUmap hasUmapLogSparsity hasUmapClusters
        num_prompts num_tokens_in_prompt dataset notes createdAt""",
    "SourceRelease": """name description descriptionShort creatorName creatorNameShort
        creatorId creatorEmail visibility isNewUi featured urls defaultSourceSetName
        defaultSourceId defaultUmapSourceIds createdAt""",
    "Explanation": """id modelId layer index description authorId typeName
        explanationModelName embedding notes triggeredByUserId createdAt updatedAt scoreV1
        scoreV2 umap_x umap_y umap_cluster umap_log_feature_sparsity""",
}
# What an Explanation row cannot do without (the schema's required columns).
EXPLANATION_REQUIRED = {"id", "modelId", "layer", "index", "description", "authorId"}
EMBEDDING_DIM = 256
COLUMNS = {t: set(c.split()) for t, c in COLUMNS.items()}
META_FILES = {
    "release.jsonl": "SourceRelease",
    "model.jsonl": "Model",
    "sourceset.jsonl": "SourceSet",
    "source.jsonl": "Source",
}
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})?$")


class Checker:
    def __init__(self):
        self.failures = 0
        self.counts = {"latents": 0, "batches": 0, "examples": 0, "lines": 0, "explanations": 0}

    def fail(self, where, what):
        self.failures += 1
        print(f"FAIL {where}: {what}")

    def expect(self, ok, where, what):
        if not ok:
            self.fail(where, what)
        return ok


def close(a, b, tol=TOL):
    return abs(a - b) <= tol


def number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_examples(c, where, max_of, examples, key):
    """The groups of one latent: key maps our field names to the layout's."""
    k = key
    if not examples:
        c.fail(where, "no examples")
        return None
    for j, a in enumerate(examples):
        w = f"{where} example {j}"
        toks, vals = a.get(k["tokens"]), a.get(k["values"])
        if not (isinstance(toks, list) and isinstance(vals, list)):
            c.fail(w, "tokens or values missing")
            continue
        c.expect(len(toks) == len(vals), w, f"len(tokens) {len(toks)} != len(values) {len(vals)}")
        c.expect(all(number(v) for v in vals), w, "a value that is not a finite number")
        q = a.get(k["qti"])
        c.expect(isinstance(q, int) and 0 <= q < len(vals), w, f"qualifying token index {q} outside 0..{len(vals)}")
    values = [a.get(k["values"]) or [0.0] for a in examples]
    latent_max = max(max(v) for v in values)
    # The top group first, then intervals.
    tops = [a for a in examples if a.get(k["min"]) == -1]
    n_top = 0
    while n_top < len(examples) and examples[n_top].get(k["min"]) == -1:
        n_top += 1
    c.expect(n_top > 0, where, "the first example is not in the top group (binMin -1)")
    c.expect(len(tops) == n_top, where, "top-group examples after interval examples")
    for j, a in enumerate(examples[:n_top]):
        w = f"{where} top example {j}"
        c.expect(a.get(k["contains"]) == -1, w, f"top group binContains {a.get(k['contains'])} != -1")
        c.expect(number(a.get(k["max"])) and close(a[k["max"]], latent_max), w,
                 f"top group binMax {a.get(k['max'])} != the latent's max {latent_max}")
    if max_of is not None:
        c.expect(close(max_of, latent_max), where, f"stated max {max_of} != max over examples {latent_max}")
    # Intervals: distinct (lo, hi) in order of appearance.
    groups = []
    for a in examples[n_top:]:
        b = (a.get(k["min"]), a.get(k["max"]), a.get(k["contains"]))
        if not all(number(x) for x in b):
            c.fail(where, f"interval bin fields not numbers: {b}")
            return latent_max
        if not groups or groups[-1][:2] != b[:2]:
            groups.append(b)
        elif groups[-1] != b:
            c.fail(where, f"one interval with two binContains: {groups[-1]} and {b}")
        v = a[k["values"]][a[k["qti"]]] if 0 <= a[k["qti"]] < len(a[k["values"]]) else None
        if v is not None:
            c.expect(b[0] - TOL <= v <= b[1] + TOL, where, f"example value {v} outside its interval [{b[0]}, {b[1]}]")
    if groups:
        seen = set()
        for g in groups:
            c.expect(g[:2] not in seen, where, f"interval {g[:2]} appears twice (not grouped)")
            seen.add(g[:2])
        # The grid's step: the median width (one bad interval does not move it).
        widths = sorted(g[1] - g[0] for g in groups)
        w0 = widths[len(widths) // 2]
        c.expect(w0 > 0, where, f"interval of width {w0}")
        if w0 > 0:
            nint = round(latent_max / w0)
            c.expect(nint >= 1 and close(nint * w0, latent_max, TOL * (nint + 2)), where,
                     f"interval width {w0} does not divide [0, {latent_max}]")
            for g in groups:
                c.expect(close(g[1] - g[0], w0, 2 * TOL), where, f"interval {g[:2]} not of width {w0}")
                kk = round(g[0] / w0)
                c.expect(close(g[0], kk * w0, TOL * (kk + 2)), where, f"interval {g[:2]} not on the grid 0, {w0}, ...")
                c.expect(-TOL <= g[0] and g[1] <= latent_max + TOL, where, f"interval {g[:2]} outside [0, {latent_max}]")
                c.expect(0 <= g[2] <= 1, where, f"binContains {g[2]} not a fraction")
            for x, y in zip(groups, groups[1:]):
                c.expect(y[0] >= x[1] - TOL, where, f"intervals {x[:2]} and {y[:2]} overlap or are not increasing")
            # Tiling: with all intervals present they cover [0, max] end to end.
            if len(groups) == nint:
                c.expect(close(groups[0][0], 0.0) and close(groups[-1][1], latent_max, TOL * (nint + 2)), where,
                         f"intervals do not tile [0, {latent_max}]: {[g[:2] for g in groups]}")
                for x, y in zip(groups, groups[1:]):
                    c.expect(close(x[1], y[0]), where, f"intervals {x[:2]} and {y[:2]} do not share an endpoint")
    return latent_max


def check_feature_tables(c, where, f, positions, d_vocab):
    """Fields shared by (A) features and (B) Neuron rows."""
    for side, order in (("pos", -1), ("neg", 1)):
        s, v = f.get(f"{side}_str"), f.get(f"{side}_values")
        if not (isinstance(s, list) and isinstance(v, list)):
            c.fail(where, f"{side}_str or {side}_values missing")
            continue
        c.expect(len(s) == 10 and len(v) == 10, where, f"{side} list of {len(s)} tokens and {len(v)} values, not 10")
        c.expect(len(set(s)) == len(s), where, f"{side}_str tokens not distinct: {s}")
        ok = all(order * (b - a) >= 0 for a, b in zip(v, v[1:]))
        c.expect(ok, where, f"{side}_values not sorted {'descending' if order < 0 else 'ascending'}: {v}")
    fh, fv = f.get("freq_hist_data_bar_heights"), f.get("freq_hist_data_bar_values")
    count = None
    if c.expect(isinstance(fh, list) and isinstance(fv, list) and len(fh) == 50 and len(fv) == 50,
                where, "freq histogram without 50 heights and 50 values"):
        c.expect(all(number(h) and h >= 0 and h == int(h) for h in fh), where, "freq heights not counts")
        c.expect(all(a < b for a, b in zip(fv, fv[1:])), where, "freq bar values not increasing")
        count = sum(fh)
        frac = f.get("frac_nonzero")
        if c.expect(number(frac) and 0 < frac <= 1, where, f"frac_nonzero {frac} not a fraction in (0, 1]"):
            if positions:
                rounded = abs(round(frac, 5) - frac) < 1e-12
                tol = 0.5 + (5e-6 * positions if rounded else 1e-9 * positions)
                c.expect(abs(frac * positions - count) <= tol, where,
                         f"sum of freq heights {count} != frac_nonzero x positions = {frac * positions:.3f}")
    lh = f.get("logits_hist_data_bar_heights")
    if c.expect(isinstance(lh, list) and len(lh) == 50, where, "logits histogram without 50 heights"):
        c.expect(sum(lh) == d_vocab, where, f"sum of logits heights {sum(lh)} != d_vocab {d_vocab}")
    for key in ("neuron_alignment", "correlated_neurons", "correlated_features"):
        idx = f.get(f"{key}_indices")
        c.expect(isinstance(idx, list), where, f"{key}_indices missing")
        for suffix in ("l1", "pearson") if key != "neuron_alignment" else ("values", "l1"):
            vals = f.get(f"{key}_{suffix}")
            if c.expect(isinstance(vals, list), where, f"{key}_{suffix} missing") and vals and isinstance(idx, list):
                c.expect(len(vals) == len(idx), where, f"{key}_{suffix} has {len(vals)} values for {len(idx)} indices")
    return count


def read_json(c, path):
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read())
    except (OSError, ValueError) as e:
        c.fail(path, f"unreadable JSON: {e}")
        return None


def check_dashboard(c, d, settings, d_vocab):
    positions = settings.get("n_positions") if settings else None
    files = sorted((f for f in os.listdir(d) if re.fullmatch(r"batch-\d+\.json", f)),
                   key=lambda f: int(f[6:-5]))
    heights = {}
    seen = set()
    for name in files:
        path = os.path.join(d, name)
        b = read_json(c, path)
        if b is None:
            continue
        c.counts["batches"] += 1
        for k in ("model_id", "layer", "sae_set", "sae_id_suffix", "features"):
            c.expect(k in b, path, f"no {k}")
        for f in b.get("features", []):
            i = f.get("feature_index")
            where = f"{path} latent {i}"
            c.expect(isinstance(i, int) and i not in seen, where, "feature_index not a new integer")
            seen.add(i)
            c.counts["latents"] += 1
            acts = f.get("activations", [])
            c.counts["examples"] += len(acts)
            key = {"tokens": "tokens", "values": "values", "qti": "qualifying_token_index",
                   "min": "bin_min", "max": "bin_max", "contains": "bin_contains"}
            check_examples(c, where, None, acts, key)
            ntp = f.get("n_tokens_in_prompt")
            for j, a in enumerate(acts):
                if isinstance(ntp, int) and isinstance(a.get("tokens"), list):
                    c.expect(len(a["tokens"]) == ntp - 1, f"{where} example {j}",
                             f"{len(a['tokens'])} tokens, not n_tokens_in_prompt - 1 = {ntp - 1}")
            heights[i] = check_feature_tables(c, where, f, positions, d_vocab), f.get("freq_hist_data_bar_heights")
    skipped = os.path.join(d, "skipped_indexes.json")
    if os.path.exists(skipped):
        s = read_json(c, skipped)
        if s is not None:
            dup = set(s.get("skipped_indexes", [])) & seen
            c.expect(not dup, skipped, f"latents both skipped and in a batch: {sorted(dup)[:5]}")
    return heights


def read_jsonl(c, path):
    opener = gzip.open if path.endswith(".gz") else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    c.fail(f"{path} line {n}", f"not JSON: {e}")
    except OSError as e:
        c.fail(path, f"unreadable: {e}")
    return rows


def check_keys(c, path, rows, table):
    c.counts["lines"] += len(rows)
    if not rows:
        c.fail(path, "no rows")
        return
    first = set(rows[0])
    for n, r in enumerate(rows, 1):
        if set(r) != first:
            c.fail(f"{path} line {n}", f"keys differ from line 1: {sorted(set(r) ^ first)}")
    extra = first - COLUMNS[table]
    c.expect(not extra, path, f"keys that are not {table} columns: {sorted(extra)}")
    for n, r in enumerate(rows, 1):
        for k in ("createdAt", "updatedAt"):
            if k in r:
                c.expect(isinstance(r[k], str) and ISO.match(r[k]), f"{path} line {n}", f"{k} {r[k]!r} not an ISO datetime")


def check_bulk(c, d, positions, d_vocab, dash_heights):
    for name, table in META_FILES.items():
        path = os.path.join(d, name)
        if c.expect(os.path.isfile(path), d, f"no {name}"):
            rows = read_jsonl(c, path)
            check_keys(c, path, rows, table)
    source = read_jsonl(c, os.path.join(d, "source.jsonl")) if os.path.isfile(os.path.join(d, "source.jsonl")) else []
    src = source[0] if source else {}
    bound = None
    if isinstance(src.get("num_prompts"), int) and isinstance(src.get("num_tokens_in_prompt"), int):
        bound = src["num_prompts"] * (src["num_tokens_in_prompt"] - 1)
    ids = set()
    for sub, table in (("features", "Neuron"), ("activations", "Activation")):
        sd = os.path.join(d, sub)
        c.expect(os.path.isdir(sd), d, f"no {sub}/")
    fdir, adir = os.path.join(d, "features"), os.path.join(d, "activations")
    names = sorted(f for f in os.listdir(fdir) if f.endswith(".jsonl.gz")) if os.path.isdir(fdir) else []
    neuron_of = {}  # index -> (modelId, layer) of its Neuron row
    for name in names:
        fpath, apath = os.path.join(fdir, name), os.path.join(adir, name)
        neurons = read_jsonl(c, fpath)
        check_keys(c, fpath, neurons, "Neuron")
        for r in neurons:
            neuron_of[r.get("index")] = (r.get("modelId"), r.get("layer"))
        if not c.expect(os.path.isfile(apath), fpath, f"no activations/{name}"):
            continue
        acts = read_jsonl(c, apath)
        check_keys(c, apath, acts, "Activation")
        by_index = {}
        for n, a in enumerate(acts, 1):
            w = f"{apath} line {n}"
            c.expect(isinstance(a.get("index"), str), w, f"index {a.get('index')!r} not a string")
            c.expect(a.get("id") not in ids, w, f"activation id {a.get('id')!r} not unique")
            ids.add(a.get("id"))
            vals = a.get("values")
            if isinstance(vals, list) and vals and all(number(v) for v in vals):
                mx = max(vals)
                c.expect(a.get("maxValue") == mx, w, f"maxValue {a.get('maxValue')} != max(values) {mx}")
                c.expect(a.get("maxValueTokenIndex") == vals.index(mx), w,
                         f"maxValueTokenIndex {a.get('maxValueTokenIndex')} != first argmax {vals.index(mx)}")
                c.expect(a.get("minValue") == min(vals), w, f"minValue {a.get('minValue')} != min(values) {min(vals)}")
            by_index.setdefault(a.get("index"), []).append(a)
        for n, r in enumerate(neurons, 1):
            i = r.get("index")
            w = f"{fpath} line {n} (latent {i})"
            c.expect(isinstance(i, str), w, f"index {i!r} not a string")
            rows = by_index.pop(i, [])
            key = {"tokens": "tokens", "values": "values", "qti": "qualifyingTokenIndex",
                   "min": "binMin", "max": "binMax", "contains": "binContains"}
            check_examples(c, w, None, rows, key)
            if rows:
                mv = max(a.get("maxValue", -math.inf) for a in rows)
                c.expect(r.get("maxActApprox") == mv, w, f"maxActApprox {r.get('maxActApprox')} != max maxValue of its rows {mv}")
            count = check_feature_tables(c, w, r, positions, d_vocab)
            if count is not None and bound and positions is None:
                frac = r.get("frac_nonzero")
                if number(frac):
                    c.expect(count <= frac * bound + 0.5 + 5e-6 * bound, w,
                             f"sum of freq heights {count} above frac_nonzero x the source's token positions")
            if dash_heights and i is not None and i.isdigit():
                dh = dash_heights.get(int(i))
                if dh is not None:
                    c.expect(dh[1] == r.get("freq_hist_data_bar_heights"), w, "freq heights differ from the batch JSON")
            ci, cv = r.get("topkCosSimIndices"), r.get("topkCosSimValues")
            c.expect(isinstance(ci, list) and isinstance(cv, list) and len(ci) == len(cv), w, "topkCosSim indices and values differ in length")
        for i in by_index:
            c.fail(apath, f"activation rows of latent {i}, which has no Neuron row in {fpath}")
    check_explanations(c, d, neuron_of)


def check_explanations(c, d, neuron_of):
    """explanations/batch-{n}.jsonl.gz, if any: every row belongs to a Neuron row."""
    edir = os.path.join(d, "explanations")
    if not os.path.isdir(edir):
        return
    names = sorted(os.listdir(edir))
    c.expect(names, edir, "an explanations/ folder without files")
    keys, ids = None, set()
    for name in names:
        path = os.path.join(edir, name)
        if not c.expect(re.fullmatch(r"batch-\d+\.jsonl\.gz", name), path, "not a batch-{n}.jsonl.gz file"):
            continue
        rows = read_jsonl(c, path)
        check_keys(c, path, rows, "Explanation")
        if not rows:
            continue
        c.counts["explanations"] += len(rows)
        if keys is None:
            keys = (path, set(rows[0]))
            missing = EXPLANATION_REQUIRED - keys[1]
            c.expect(not missing, path, f"Explanation rows without {sorted(missing)}")
        elif set(rows[0]) != keys[1]:
            c.fail(path, f"keys differ from {keys[0]}: {sorted(set(rows[0]) ^ keys[1])}")
        for n, r in enumerate(rows, 1):
            w = f"{path} line {n}"
            rid, i = r.get("id"), r.get("index")
            c.expect(isinstance(rid, str) and rid and rid not in ids, w, f"explanation id {rid!r} not a new string")
            ids.add(rid)
            if not c.expect(isinstance(i, str), w, f"index {i!r} not a string"):
                continue
            owner = neuron_of.get(i)
            if c.expect(owner is not None, w, f"explanation of latent {i}, which has no Neuron row"):
                c.expect((r.get("modelId"), r.get("layer")) == owner, w,
                         f"modelId/layer {(r.get('modelId'), r.get('layer'))} != its Neuron row's {owner}")
            desc = r.get("description")
            c.expect(isinstance(desc, str) and desc.strip(), w, f"description {desc!r} empty or not a string")
            author = r.get("authorId")
            c.expect(isinstance(author, str) and author, w, f"authorId {author!r} not a non-empty string")
            e = r.get("embedding")
            c.expect(e is None or (isinstance(e, list) and len(e) == EMBEDDING_DIM and all(number(x) for x in e)),
                     w, f"embedding neither null nor {EMBEDDING_DIM} numbers")
            for k in ("notes", "typeName", "explanationModelName", "triggeredByUserId"):
                c.expect(r.get(k) is None or isinstance(r[k], str), w, f"{k} {r.get(k)!r} neither null nor a string")


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    d = argv[1]
    if not os.path.isdir(d):
        print(f"{d}: not a folder", file=sys.stderr)
        return 2
    c = Checker()
    settings = None
    sp = os.path.join(d, "run_settings.json")
    if os.path.isfile(sp):
        settings = read_json(c, sp)
    d_vocab = (settings or {}).get("d_vocab", SMOLLM2_VOCAB)
    positions = (settings or {}).get("n_positions")
    has_a = any(re.fullmatch(r"batch-\d+\.json", f) for f in os.listdir(d))
    heights = {}
    if has_a:
        try:
            heights = check_dashboard(c, d, settings, d_vocab)
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
            c.fail(d, f"malformed batch JSON: {e!r}")
    bulk_dirs = []
    for root, dirs, files in os.walk(d):
        if "source.jsonl" in files:
            bulk_dirs.append(root)
        if root[len(d):].count(os.sep) >= 3:
            dirs[:] = []
    for b in sorted(bulk_dirs):
        try:
            check_bulk(c, b, positions, d_vocab, heights)
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
            c.fail(b, f"malformed rows: {e!r}")
    if not has_a and not bulk_dirs:
        print(f"{d}: neither batch-*.json files nor a bulk-import folder (source.jsonl)", file=sys.stderr)
        return 2
    k = c.counts
    layouts = " + ".join(x for x, y in (("dashboard batches", has_a), (f"{len(bulk_dirs)} bulk folder(s)", bulk_dirs)) if y)
    if c.failures:
        print(f"{c.failures} invariant(s) failed ({layouts})")
        return 1
    print(f"ok: {layouts}: {k['latents']} latents in {k['batches']} batches, "
          f"{k['examples']} examples, {k['explanations']} explanations, {k['lines']} JSONL lines")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main(sys.argv))
