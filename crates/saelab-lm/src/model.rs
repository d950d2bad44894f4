//! Hooked transformer forward. (Being written.)
