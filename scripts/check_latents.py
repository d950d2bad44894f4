#!/usr/bin/env python3
"""Re-check named latents of an SAE against its features folder, with the Python
standard library only.

    scripts/check_latents.py --features DIR --sae SAE --model GGUF CLAIMS.json
    scripts/check_latents.py --features DIR --explore [--top 100]

A claim (one object of the CLAIMS.json list) names a latent and its concept:

    {"latent": 17, "concept": "...", "tokens": [" one", " two"],
     "with": "a sentence with the concept", "without": "a sentence without it"}

For each claim the script prints the latent's density, top-5 contexts and top-10
promoted tokens (from stats/), and checks, failing with a non-zero exit otherwise:

  1. the concept's tokens (compared stripped and case-folded) are at least half of the
     latent's top-100 max-activating tokens, read from the delphi latent cache
     (latents/{hook}/{start}_{end}.safetensors: every active position of the pass);
  2. on `with`, the latent fires above 0.2 x its max over the pass; on `without` it
     never fires (all values exactly 0), both through `saelab encode --json`, i.e. the
     model and the SAE run again, not the features files.

--explore lists, for every latent with at least 100 active positions, the most common
stripped token among its top-100 and its share, best first: a starting point for naming.
"""

import argparse
import collections
import json
import os
import struct
import subprocess
import sys


def read_safetensors(path):
    """The tensors of a .safetensors file as (dtype, shape, flat list)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    codes = {"U32": "I", "I64": "q", "F16": "e", "F32": "f", "U64": "Q"}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        code = codes[t["dtype"]]
        count = (b - a) // struct.calcsize(code)
        out[name] = (t["dtype"], t["shape"], struct.unpack(f"<{count}{code}", body[a:b]))
    return out


class Features:
    def __init__(self, folder):
        self.dir = folder
        with open(os.path.join(folder, "features.json")) as f:
            self.manifest = json.load(f)
        if not self.manifest["state"]["complete"]:
            sys.exit(f"check_latents: {folder}: the features pass is not complete")
        self.hook = self.manifest["settings"]["hook"]
        self.ctx = self.manifest["settings"]["ctx_len"]
        with open(os.path.join(folder, "stats", "index.json")) as f:
            self.index = json.load(f)["ranges"]
        with open(os.path.join(folder, "vocab.json")) as f:
            self.vocab = json.load(f)
        self.tokens = read_safetensors(os.path.join(folder, "tokens.safetensors"))["tokens"][2]

    def range_of(self, latent):
        for r in self.index:
            if r["start"] <= latent <= r["end"]:
                return r
        sys.exit(f"check_latents: latent {latent} is not in {self.dir}")

    def record(self, latent):
        r = self.range_of(latent)
        path = os.path.join(self.dir, "stats", r["file"])
        o = r["offsets"][latent - r["start"]]
        with open(path, "rb") as f:
            f.seek(o)
            return json.loads(f.readline())

    def entries(self, start, end):
        """(latent, value, seq, pos) of every active position of latents start..=end."""
        path = os.path.join(self.dir, "latents", self.hook, f"{start}_{end}.safetensors")
        t = read_safetensors(path)
        loc, act = t["locations"][2], t["activations"][2]
        return [
            (start + loc[3 * i + 2], act[i], loc[3 * i], loc[3 * i + 1])
            for i in range(len(act))
        ]

    def token_at(self, seq, pos):
        return self.vocab[self.tokens[seq * self.ctx + pos]]

    def top_tokens(self, latent, k=100):
        r = self.range_of(latent)
        es = [e for e in self.entries(r["start"], r["end"]) if e[0] == latent]
        es.sort(key=lambda e: (-e[1], e[2], e[3]))
        return [self.token_at(s, p) for (_, _, s, p) in es[:k]]


def norm(t):
    return t.strip().casefold()


def explore(feat, k):
    rows = []
    for r in feat.index:
        by = collections.defaultdict(list)
        for e in feat.entries(r["start"], r["end"]):
            by[e[0]].append(e)
        for j, es in by.items():
            if len(es) < k:
                continue
            es.sort(key=lambda e: (-e[1], e[2], e[3]))
            c = collections.Counter(norm(feat.token_at(s, p)) for (_, _, s, p) in es[:k])
            tok, n = c.most_common(1)[0]
            rows.append((n / k, j, tok, len(es), c.most_common(5)))
    rows.sort(key=lambda x: -x[0])
    for share, j, tok, count, common in rows:
        print(f"{j:6d}  {share:.2f}  {tok!r:20}  active {count:7d}  {common}")


def encode(saelab, sae, model, text, latent):
    out = subprocess.run(
        [saelab, "encode", "--sae", sae, "--model", model, "--text", text,
         "--latent", str(latent), "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    return [t["value"] for t in json.loads(out)["tokens"]]


def check(feat, claims, saelab, sae, model):
    failed = 0
    for c in claims:
        j = c["latent"]
        rec = feat.record(j)
        want = {norm(t) for t in c["tokens"]}
        top = feat.top_tokens(j, 100)
        share = sum(norm(t) in want for t in top) / max(len(top), 1)
        v_with = encode(saelab, sae, model, c["with"], j)
        v_without = encode(saelab, sae, model, c["without"], j)
        ok_share = share >= 0.5
        ok_with = max(v_with) > 0.2 * rec["max"]
        ok_without = all(v == 0.0 for v in v_without)
        print(f"latent {j}: {c['concept']}")
        print(f"  density {rec['density']:.6f}  ({rec['count']} active of "
              f"{feat.manifest['settings']['positions']})  max {rec['max']:.4f}")
        print("  top-5 contexts:")
        for ctx in rec["top"][:5]:
            print(f"    {ctx_summary(feat, ctx)}")
        promoted = [feat.vocab[t["token"]] for t in rec["logits"]["top"][:10]]
        print(f"  top-10 promoted tokens: {promoted}")
        print(f"  concept tokens in the top-100: {share:.2f}  "
              f"{'ok' if ok_share else 'FAIL (< 0.50)'}")
        print(f"  with:    max {max(v_with):.4f} vs 0.2 x max = {0.2 * rec['max']:.4f}  "
              f"{'ok' if ok_with else 'FAIL'}")
        print(f"  without: max {max(v_without):.4f}  {'ok' if ok_without else 'FAIL'}")
        failed += not (ok_share and ok_with and ok_without)
    if failed:
        sys.exit(f"check_latents: {failed} of {len(claims)} claims failed")
    print(f"check_latents: all {len(claims)} claims hold")


def ctx_summary(feat, ctx):
    """A top context around its max token (in [[ ]]) with the value there."""
    seq, pos = ctx["seq"], ctx["pos"]
    row = feat.tokens[seq * feat.ctx : (seq + 1) * feat.ctx]
    lo, hi = max(0, pos - 12), min(feat.ctx, pos + 4)
    text = "".join(
        (f"[[{feat.vocab[row[i]]}]]" if i == pos else feat.vocab[row[i]])
        for i in range(lo, hi)
    )
    return f"{ctx['value']:.3f}  {text!r}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--features", required=True)
    ap.add_argument("--sae")
    ap.add_argument("--model")
    ap.add_argument("--saelab", default=os.path.join(
        os.path.dirname(__file__), "..", "target", "release", "saelab"))
    ap.add_argument("--explore", action="store_true")
    ap.add_argument("--top", type=int, default=100)
    ap.add_argument("claims", nargs="?")
    a = ap.parse_args()
    feat = Features(a.features)
    if a.explore:
        explore(feat, a.top)
        return
    if not (a.claims and a.sae and a.model):
        sys.exit("check_latents: give --sae, --model and a claims file (or --explore)")
    with open(a.claims) as f:
        claims = json.load(f)
    check(feat, claims, a.saelab, a.sae, a.model)


if __name__ == "__main__":
    main()
