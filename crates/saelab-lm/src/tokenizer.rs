//! Tokenizers. (Being written.)
