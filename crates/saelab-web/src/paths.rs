//! The check every request path passes before routing: each `/`-separated segment is
//! percent-decoded, and a path is refused when a segment decodes to `.` or `..`, holds
//! a `/` or `\` (an absolute path inside a parameter), a NUL or invalid UTF-8, or when
//! the path has an empty segment inside it (`/latent//etc/passwd`). No route reads a
//! file named by a request, so this is a second fence, not the only one.

use crate::error::{Result, WebError};

/// Decodes `%XX` escapes; `None` for a malformed escape.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// At most 80 characters of `path`, for an error message.
pub fn shorten(path: &str) -> String {
    let mut s: String = path.chars().take(80).collect();
    if path.chars().count() > 80 {
        s.push('…');
    }
    s
}

/// Checks a request path (see the module docs): a 400 naming it when refused.
pub fn check(path: &str) -> Result<()> {
    let refuse = |why: &str| {
        Err(WebError::BadRequest(format!(
            "refused path {}: {why}",
            shorten(path)
        )))
    };
    if !path.starts_with('/') {
        return refuse("not an absolute request path");
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (k, seg) in segments.iter().enumerate() {
        if seg.is_empty() && k + 1 < segments.len() {
            return refuse("an empty segment (an absolute path inside a parameter?)");
        }
        let Some(bytes) = percent_decode(seg) else {
            return refuse("a malformed %-escape");
        };
        let Ok(text) = std::str::from_utf8(&bytes) else {
            return refuse("not UTF-8");
        };
        if text == "." || text == ".." {
            return refuse("a path parameter may not climb with `..`");
        }
        if text.contains(['/', '\\']) {
            return refuse("a path parameter may not hold an absolute path or a separator");
        }
        if text.contains('\0') {
            return refuse("a NUL byte");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_climbing_and_absolute_paths() {
        for ok in [
            "/",
            "/latent/3",
            "/api/latents",
            "/assets/style.css",
            "/latent/",
        ] {
            assert!(check(ok).is_ok(), "{ok}");
        }
        for bad in [
            "/latent/..",
            "/latent/../features.json",
            "/latent/%2e%2e",
            "/assets/..%2F..%2Fetc%2Fpasswd",
            "/assets/%2Fetc%2Fpasswd",
            "/latent//etc/passwd",
            "/api/latent/%5C..%5Cx",
            "/latent/%00",
            "/latent/%zz",
            "/latent/%ff",
        ] {
            let e = check(bad).unwrap_err();
            assert_eq!(e.status().as_u16(), 400, "{bad}");
            assert!(e.message().starts_with("refused path"), "{bad}: {e}");
        }
    }
}
