//! Chat prompts: the ChatML templates of SmolLM2's and Qwen2.5's instruct models,
//! recognised from the Jinja template a checkpoint carries (GGUF
//! `tokenizer.chat_template`, or `tokenizer_config.json`'s `chat_template`), and turned
//! into token ids.
//!
//! ChatML writes each message as `<|im_start|>{role}\n{content}<|im_end|>\n` and asks
//! for a reply with `<|im_start|>assistant\n`. SmolLM2's template also starts a
//! conversation whose first message is not a system message with a default one
//! (`You are a helpful AI assistant named SmolLM, trained by Hugging Face`). Qwen2.5's
//! does the same (`You are Qwen, created by Alibaba Cloud. You are a helpful
//! assistant.`) and has branches for tools and tool calls, which saelab's messages
//! never reach (they have no tools, tool calls or `tool` role), so it writes what
//! SmolLM2's form writes.
//!
//! saelab does not run Jinja: [`ChatTemplate::parse`] compares the template, with the
//! whitespace inside its tags and the spelling of its string literals normalised, with
//! the ChatML forms it implements (plain, or with a default system message, whose text
//! it reads from the template, as SmolLM2's or Qwen2.5's), and refuses any other
//! template with an error.
//!
//! Token ids: `<|im_start|>` and `<|im_end|>` are single control-token ids; the text
//! between them (`{role}\n{content}`, and the `\n` after each message) is encoded as
//! data ([`Tokenizer::encode`]), so a message cannot inject control tokens. For text
//! without control-token strings the ids equal
//! [`Tokenizer::encode_with_special`] of the rendered text ([`ChatTemplate::render`]).

use crate::error::{Error, Result};

use crate::tokenizer::Tokenizer;

/// The start-of-message marker.
const IM_START: &str = "<|im_start|>";
/// The end-of-message marker.
const IM_END: &str = "<|im_end|>";

/// The plain ChatML template (as Hugging Face writes it).
const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + \
    '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if \
    add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// ChatML with a default system message (SmolLM2's template); `@SYSTEM@` stands for its
/// text.
const CHATML_DEFAULT_SYSTEM: &str = "{% for message in messages %}{% if loop.first and \
    messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n@SYSTEM@<|im_end|>\n' }}{% \
    endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' \
    + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% \
    endif %}";

/// Qwen2.5's instruct template (as the GGUF of Qwen2.5-Coder-0.5B-Instruct stores it),
/// ChatML with a default system message (`@SYSTEM@`, at both places it appears) and
/// branches for tools. Later uploads (Qwen2.5-Coder-1.5B-Instruct's GGUF) write the
/// tools branch's JSON example with doubled braces, [`QWEN25_TOOLS_EXAMPLE`]; the
/// conversations saelab renders (no tools) come out the same from both.
const QWEN25_CHATML: &str = r#"{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- '@SYSTEM@' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\n@SYSTEM@<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"#;

/// Who speaks a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Instructions to the model (`system`).
    System,
    /// The user's turn (`user`).
    User,
    /// The model's turn (`assistant`).
    Assistant,
}

impl Role {
    /// The role's name in the template.
    pub fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub content: String,
}

impl Message {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Message {
            role: Role::System,
            content: content.into(),
        }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: Role::User,
            content: content.into(),
        }
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Message {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// The tools branch's JSON example in [`QWEN25_CHATML`], and as later uploads write it.
const QWEN25_TOOLS_EXAMPLE: (&str, &str) = (
    r#"\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"#,
    r#"\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n"#,
);

/// A chat template saelab implements: ChatML, with or without a default system message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatTemplate {
    /// The system message put first when a conversation does not start with one.
    default_system: Option<String>,
}

impl ChatTemplate {
    /// Recognises a Jinja chat template as one of the ChatML forms; errors (one line,
    /// quoting the template's start) for any other template.
    pub fn parse(template: &str) -> Result<Self> {
        let norm = normalize(template);
        if norm.as_deref() == normalize(CHATML).as_deref() {
            return Ok(ChatTemplate {
                default_system: None,
            });
        }
        let (example, doubled) = QWEN25_TOOLS_EXAMPLE;
        let qwen25_doubled = QWEN25_CHATML.replace(example, doubled);
        for form in [CHATML_DEFAULT_SYSTEM, QWEN25_CHATML, &qwen25_doubled] {
            if let Some(system) = norm.as_deref().and_then(|n| default_system_of(n, form)) {
                return Ok(ChatTemplate {
                    default_system: Some(system),
                });
            }
        }
        let start: String = template.chars().take(60).collect();
        Err(Error::config(format!(
            "unsupported chat template (saelab implements ChatML only): {:?}…",
            start
        )))
    }

    /// The chat template of `tokenizer`'s checkpoint; errors when it has none or it is
    /// not ChatML.
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Result<Self> {
        let src = tokenizer.chat_template().ok_or_else(|| {
            Error::config(format!(
                "{} has no chat template",
                tokenizer.source().display()
            ))
        })?;
        Self::parse(src)
            .map_err(|e| Error::config(format!("{}: {e}", tokenizer.source().display())))
    }

    /// The default system message, when the template has one.
    pub fn default_system(&self) -> Option<&str> {
        self.default_system.as_deref()
    }

    /// The messages as the template writes them, with the default system message first
    /// when the conversation does not start with a system message (and the template has
    /// one), and `<|im_start|>assistant\n` at the end when `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> String {
        let mut out = String::new();
        for (role, content) in self.turns(messages) {
            out.push_str(IM_START);
            out.push_str(role);
            out.push('\n');
            out.push_str(content);
            out.push_str(IM_END);
            out.push('\n');
        }
        if add_generation_prompt {
            out.push_str(IM_START);
            out.push_str("assistant\n");
        }
        out
    }

    /// The token ids of [`ChatTemplate::render`]'s text: the markers as their single
    /// control-token ids, everything else encoded as data. Errors if the tokenizer has
    /// no `<|im_start|>` / `<|im_end|>` token or cannot represent a message's text.
    pub fn encode(
        &self,
        tokenizer: &Tokenizer,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let id = |piece: &str| {
            tokenizer.token_to_id(piece).ok_or_else(|| {
                Error::config(format!(
                    "the vocabulary of {} has no {piece} token, which ChatML needs",
                    tokenizer.source().display()
                ))
            })
        };
        let (start, end) = (id(IM_START)?, id(IM_END)?);
        let newline = tokenizer.encode("\n")?;
        let mut ids = Vec::new();
        for (role, content) in self.turns(messages) {
            ids.push(start);
            ids.extend(tokenizer.encode(&format!("{role}\n{content}"))?);
            ids.push(end);
            ids.extend_from_slice(&newline);
        }
        if add_generation_prompt {
            ids.push(start);
            ids.extend(tokenizer.encode("assistant\n")?);
        }
        Ok(ids)
    }

    /// `(role, content)` of every message written, the default system message first
    /// when it applies.
    fn turns<'m>(&'m self, messages: &'m [Message]) -> impl Iterator<Item = (&'m str, &'m str)> {
        let default = match (&self.default_system, messages.first()) {
            (Some(text), first) if first.is_none_or(|m| m.role != Role::System) => {
                Some(("system", text.as_str()))
            }
            _ => None,
        };
        default
            .into_iter()
            .chain(messages.iter().map(|m| (m.role.name(), m.content.as_str())))
    }
}

/// The default system message of the normalised template `norm` when it is `form` with
/// one and the same text at every `@SYSTEM@` placeholder; `None` otherwise.
fn default_system_of(norm: &str, form: &str) -> Option<String> {
    let canon = normalize(form)?;
    let pieces: Vec<&str> = canon.split("@SYSTEM@").collect();
    let rest = norm.strip_prefix(pieces[0])?;
    let text = &rest[..rest.find(pieces.get(1)?)?];
    (pieces.join(text) == norm).then(|| unescape(text))?
}

/// A template in a canonical spelling, for comparing templates: text outside the
/// `{{ }}` / `{% %}` tags as it is (trimmed where a tag says `-`), and inside a tag
/// no whitespace outside string literals, every literal single-quoted with its escapes
/// decoded (only `'` and `\` escaped again) and adjacent literals joined by `+` merged
/// into one. `None` if a tag or a literal is not closed.
fn normalize(template: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = template;
    let mut trim_next = false;
    loop {
        let open = ["{{", "{%"]
            .iter()
            .filter_map(|d| rest.find(d))
            .min()
            .unwrap_or(rest.len());
        let mut text = &rest[..open];
        if trim_next {
            text = text.trim_start();
        }
        rest = &rest[open..];
        let trim_before = rest.get(2..3) == Some("-");
        if trim_before {
            text = text.trim_end();
        }
        out.push_str(text);
        if rest.is_empty() {
            return Some(out);
        }
        let close = if rest.starts_with("{{") { "}}" } else { "%}" };
        let body_start = if trim_before { 3 } else { 2 };
        let (body, after) = split_tag(&rest[body_start..], close)?;
        trim_next = body.ends_with('-');
        let body = body.strip_suffix('-').unwrap_or(body);
        out.push_str(&rest[..2]);
        out.push_str(&normalize_code(body)?);
        out.push_str(close);
        rest = after;
    }
}

/// Splits `s` at the first `close` outside string literals: the tag body and what
/// follows the tag.
fn split_tag<'s>(s: &'s str, close: &str) -> Option<(&'s str, &'s str)> {
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => quote = Some(c),
            None if s[i..].starts_with(close) => return Some((&s[..i], &s[i + close.len()..])),
            None => {}
        }
    }
    None
}

/// One tag body in the canonical spelling of [`normalize`].
fn normalize_code(body: &str) -> Option<String> {
    enum Piece {
        Code(String),
        Str(String),
    }
    let mut pieces: Vec<Piece> = Vec::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c == '\'' || c == '"' {
            let mut s = String::new();
            loop {
                match chars.next()? {
                    '\\' => s.push(match chars.next()? {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        other => other,
                    }),
                    q if q == c => break,
                    other => s.push(other),
                }
            }
            // 'a' + 'b' is 'ab'.
            let n = pieces.len();
            if n >= 2 && matches!(&pieces[n - 1], Piece::Code(p) if p == "+") {
                if let Piece::Str(prev) = &mut pieces[n - 2] {
                    prev.push_str(&s);
                    pieces.pop();
                    continue;
                }
            }
            pieces.push(Piece::Str(s));
        } else if !c.is_whitespace() {
            match pieces.last_mut() {
                Some(Piece::Code(code)) => code.push(c),
                _ => pieces.push(Piece::Code(c.to_string())),
            }
        }
    }
    let mut out = String::new();
    for p in pieces {
        match p {
            Piece::Code(c) => out.push_str(&c),
            Piece::Str(s) => {
                out.push('\'');
                for c in s.chars() {
                    if c == '\'' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('\'');
            }
        }
    }
    Some(out)
}

/// The text of a literal's canonical spelling (`\'` and `\\` decoded); `None` if it
/// holds an unescaped quote (it would not be one literal).
fn unescape(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '\'' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M-Instruct's `tokenizer.chat_template`, as its GGUF stores it.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn smollm2_template_is_chatml_with_its_default_system_message() {
        let t = ChatTemplate::parse(SMOLLM2).unwrap();
        let sys = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
        assert_eq!(t.default_system(), Some(sys));
        assert_eq!(
            t.render(&[Message::user("Hi")], true),
            format!("<|im_start|>system\n{sys}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        );
        // A conversation with its own system message gets no default one.
        assert_eq!(
            t.render(&[Message::system("S"), Message::user("U"), Message::assistant("A")], false),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
        );
    }

    #[test]
    fn qwen25_template_is_chatml_with_its_default_system_message() {
        let sys = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
        let stored = QWEN25_CHATML.replace("@SYSTEM@", sys);
        let t = ChatTemplate::parse(&stored).unwrap();
        assert_eq!(t.default_system(), Some(sys));
        assert_eq!(
            t.render(&[Message::user("Hi")], true),
            format!("<|im_start|>system\n{sys}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        );
        // The two places of the default message must agree.
        let one = QWEN25_CHATML
            .replacen("@SYSTEM@", sys, 1)
            .replace("@SYSTEM@", "Other.");
        assert!(ChatTemplate::parse(&one).is_err());
        // The later spelling of the tools example (Qwen2.5-Coder-1.5B-Instruct's GGUF).
        let (example, doubled) = QWEN25_TOOLS_EXAMPLE;
        let later = stored.replace(example, doubled);
        assert_ne!(later, stored);
        assert_eq!(ChatTemplate::parse(&later).unwrap(), t);
    }

    #[test]
    fn spelling_differences_do_not_matter_but_other_templates_are_refused() {
        // Escaped newlines, double quotes, whitespace and one literal for two.
        let respelled = "{%- for message in messages -%}\n  {{ \"<|im_start|>\" + message['role'] + \"\\n\" + message['content'] + '<|im_end|>\\n' }}\n{%- endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}{% endif %}";
        assert_eq!(
            ChatTemplate::parse(respelled).unwrap().default_system(),
            None
        );
        let llama3 = "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}{% endfor %}";
        let e = ChatTemplate::parse(llama3).unwrap_err().to_string();
        assert!(e.contains("ChatML only") && !e.contains('\n'), "{e}");
        assert!(ChatTemplate::parse("{{ unclosed").is_err());
        // A literal quote in the default system message round-trips.
        let quoted = SMOLLM2.replace("named SmolLM", "named \\'Smol\\'");
        let t = ChatTemplate::parse(&quoted).unwrap();
        assert!(t.default_system().unwrap().contains("named 'Smol'"));
    }
}
