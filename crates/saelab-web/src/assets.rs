//! The stylesheet and the script, embedded in the binary (no build step, nothing
//! fetched from elsewhere): served under `/assets/` and copied next to the exported
//! pages.

/// `style.css`.
pub const STYLE_CSS: &str = include_str!("../assets/style.css");
/// `app.js`: the exported index's sorting and search, and the prompt explorer.
pub const APP_JS: &str = include_str!("../assets/app.js");

/// The asset called `name`, with its content type, or `None`.
pub fn get(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "style.css" => Some(("text/css; charset=utf-8", STYLE_CSS)),
        "app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
        _ => None,
    }
}
