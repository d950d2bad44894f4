// saelab features dashboard: the exported index's sorting and search (by token, and
// of the explanations embedded in it), the prompt explorer and the feature page's
// steering panel. Plain browser JavaScript, no libraries, nothing fetched but
// /api/prompt and /api/steer.
"use strict";

(function index() {
  const table = document.querySelector("table[data-client]");
  if (!table) return;
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  let key = "density", desc = true;
  function sort() {
    rows.sort((a, b) => {
      const x = parseFloat(a.dataset[key]), y = parseFloat(b.dataset[key]);
      const o = desc ? y - x : x - y;
      return o !== 0 ? o : a.dataset.latent - b.dataset.latent;
    });
    rows.forEach((r) => body.appendChild(r));
  }
  table.querySelectorAll("th[data-sort]").forEach((th) => {
    th.addEventListener("click", (e) => {
      e.preventDefault();
      const k = th.dataset.sort;
      desc = k === key ? !desc : k !== "latent";
      key = k;
      sort();
    });
  });
  const search = document.getElementById("search");
  const summary = document.getElementById("summary");
  search.addEventListener("input", () => {
    const q = search.value.trim().toLowerCase();
    let shown = 0;
    rows.forEach((r) => {
      const hit = !q || JSON.parse(r.dataset.tokens).includes(q);
      r.hidden = !hit;
      if (hit) shown += 1;
    });
    summary.textContent = q ? `Token “${search.value.trim()}”: ${shown} latents` : `${rows.length} latents`;
  });
})();

// The exported index's explanation search: the records embedded as JSON, matched by
// a case-insensitive substring of their text (as the server's /explanations), the
// first 50 listed with links to their pages. Text goes in through textContent only.
(function explanations() {
  const data = document.getElementById("explanations-data");
  const input = document.getElementById("explain-search");
  if (!data || !input) return;
  const records = JSON.parse(data.textContent);
  const table = document.getElementById("explanation-hits");
  const body = table.tBodies[0];
  const summary = document.getElementById("explain-summary");
  const SHOWN = 50;
  const cell = (tr, text, cls) => {
    const td = tr.insertCell();
    if (cls) td.className = cls;
    td.textContent = text;
    return td;
  };
  input.addEventListener("input", () => {
    const q = input.value.trim().toLowerCase();
    body.textContent = "";
    if (!q) {
      table.hidden = true;
      summary.textContent = `${records.length} explanations (saelab autointerp) · type to search their text`;
      return;
    }
    const hits = records.filter((r) => r.text.toLowerCase().includes(q));
    hits.slice(0, SHOWN).forEach((r) => {
      const tr = body.insertRow();
      tr.dataset.latent = String(r.latent);
      tr.dataset.explainer = r.explainer;
      const a = document.createElement("a");
      a.href = `latent-${r.latent}.html`;
      a.textContent = `#${r.latent}`;
      tr.insertCell().appendChild(a);
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.textContent = r.explainer;
      tr.insertCell().appendChild(chip);
      cell(tr, r.text, "expl-text");
      cell(tr, r.score, r.verdict);
    });
    if (!hits.length) cell(body.insertRow(), "No explanation matches.", "muted").colSpan = 4;
    table.hidden = false;
    const more = hits.length > SHOWN ? ` · the first ${SHOWN} shown` : "";
    summary.textContent = `“${input.value.trim()}”: ${hits.length} of ${records.length} explanations${more}`;
  });
})();

(function prompt() {
  const form = document.getElementById("prompt-form");
  if (!form) return;
  const out = document.getElementById("prompt-out");
  const toks = document.getElementById("prompt-tokens");
  const top = document.getElementById("prompt-top");
  const status = document.getElementById("prompt-status");
  const latentLink = (l) => `${form.dataset.links}${l}`;
  const show = (t) => {
    if (t.text === "") return "∅";
    if (/^ +$/.test(t.text)) return "␣".repeat(t.text.length);
    return t.text.replace(/\n/g, "↵").replace(/\t/g, "→").replace(/\r/g, "");
  };
  function renderTop(tokens, at) {
    const rows = (at === null ? tokens : [tokens[at]]).map((t) => {
      const cells = t.top.map((e) => {
        const w = Math.max(2, Math.round(28 * e.value / (t.top[0].value || 1)));
        return `<a href="${latentLink(e.latent)}">#${e.latent}</a> <span class="bar" style="width:${w}px"></span>${e.value.toFixed(3)}`;
      }).join(" &nbsp; ");
      const tok = document.createElement("span");
      tok.className = "chip";
      tok.textContent = show(t);
      return `<tr data-pos="${t.pos}"><td class="num">${t.pos}</td><td>${tok.outerHTML}</td><td>${cells || '<span class="muted">none active</span>'}</td></tr>`;
    }).join("");
    top.innerHTML = `<table class="top"><thead><tr><th class="num">pos</th><th>token</th><th>latents (value)</th></tr></thead><tbody>${rows}</tbody></table>`;
  }
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    out.dataset.state = "running";
    status.textContent = "running the model…";
    const text = document.getElementById("prompt-text").value;
    const l = document.getElementById("prompt-latent").value.trim();
    const req = { text, top: 8 };
    if (l !== "") req.latent = parseInt(l, 10);
    try {
      const res = await fetch("/api/prompt", {
        method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(req),
      });
      const data = await res.json();
      if (!res.ok) throw new Error(data.error || res.statusText);
      toks.textContent = "";
      data.tokens.forEach((t, i) => {
        const s = document.createElement("span");
        s.className = "t";
        s.dataset.act = String(t.value);
        s.dataset.tokenId = String(t.id);
        const a = data.latent_max > 0 && t.value > 0 ? Math.min(1, t.value / data.latent_max) : 0;
        if (a > 0) s.style.setProperty("--a", a.toFixed(3));
        s.title = `${t.value} · token ${t.id}`;
        s.textContent = show(t);
        s.addEventListener("click", () => {
          toks.querySelectorAll(".sel").forEach((x) => x.classList.remove("sel"));
          s.classList.add("sel");
          renderTop(data.tokens, i);
        });
        toks.appendChild(s);
      });
      renderTop(data.tokens, null);
      const lat = data.latent === null ? "no latent chosen" : `latent #${data.latent}, max ${data.latent_max.toFixed(3)}`;
      status.textContent = `${data.tokens.length} tokens · ${lat}`;
      out.dataset.state = "done";
    } catch (err) {
      status.textContent = `error: ${err.message}`;
      out.dataset.state = "error";
    }
  });
  if (document.getElementById("prompt-text").value.trim() !== "") form.requestSubmit();
})();

(function steer() {
  const form = document.getElementById("steer-form");
  if (!form) return;
  const out = document.getElementById("steer-out");
  const status = document.getElementById("steer-status");
  const mode = document.getElementById("steer-mode");
  const strength = document.getElementById("steer-strength");
  const measures = document.getElementById("steer-measures");
  const latent = parseInt(form.dataset.latent, 10);
  // `ablate` takes no strength.
  const sync = () => { strength.disabled = mode.value === "ablate"; };
  mode.addEventListener("change", sync);
  sync();
  function fill(id, prompt, c) {
    const box = document.getElementById(id);
    box.textContent = "";
    const p = document.createElement("span");
    p.className = "muted";
    p.textContent = prompt;
    const g = document.createElement("span");
    g.className = "gen";
    g.textContent = c.text;
    box.append(p, g);
    box.dataset.tokens = String(c.tokens.length);
    box.dataset.finish = c.finish;
    box.title = `${c.tokens.length} tokens (${c.finish})`;
  }
  function renderMeasures(effects) {
    if (!effects.length) { measures.innerHTML = ""; return; }
    const f = (x, d) => (Number.isFinite(x) ? x.toFixed(d) : String(x));
    const rows = effects.map((e) => [
      ["concept share", f(e.unsteered.concept_share, 3), f(e.steered.concept_share, 3)],
      ["mean activation", f(e.unsteered.mean_activation, 3), f(e.steered.mean_activation, 3)],
      ["perplexity", f(e.unsteered.perplexity, 2), f(e.steered.perplexity, 2)],
    ].map(([name, u, s]) => `<tr data-latent="${e.latent}" data-measure="${name}"><td>#${e.latent}</td><td>${name}</td><td class="num">${u}</td><td class="num">${s}</td></tr>`).join("")).join("");
    measures.innerHTML = `<table class="measures"><thead><tr><th>latent</th><th>measure (${effects[0].concept_tokens} concept tokens)</th><th class="num">unsteered</th><th class="num">steered</th></tr></thead><tbody>${rows}</tbody></table>`;
  }
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    out.dataset.state = "running";
    status.textContent = "generating…";
    const edit = { latent, mode: mode.value };
    const s = strength.value.trim();
    if (mode.value !== "ablate" && s !== "") edit.strength = s;
    const req = {
      prompt: document.getElementById("steer-prompt").value,
      edits: [edit],
      positions: document.getElementById("steer-positions").value,
      max_new_tokens: parseInt(document.getElementById("steer-tokens").value, 10) || 0,
      seed: parseInt(document.getElementById("steer-seed").value, 10) || 0,
      measure: document.getElementById("steer-measure").checked,
    };
    try {
      const res = await fetch(form.dataset.endpoint, {
        method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(req),
      });
      const data = await res.json();
      if (!res.ok) throw new Error(data.error || res.statusText);
      fill("steer-unsteered", req.prompt, data.unsteered);
      fill("steer-steered", req.prompt, data.steered);
      document.getElementById("steer-edits").textContent = data.edits.map((a) => {
        const v = a.op.value === undefined ? "" : ` ${a.op.value.toFixed(3)}`;
        return `latent #${a.latent}: ${a.op.op}${v} at ${a.positions} positions`;
      }).join("; ");
      renderMeasures(data.effects);
      out.hidden = false;
      status.textContent = `${data.prompt_tokens} prompt tokens · seed ${req.seed}`;
      out.dataset.state = "done";
    } catch (err) {
      status.textContent = `error: ${err.message}`;
      out.dataset.state = "error";
    }
  });
})();
