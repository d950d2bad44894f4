//! Text sources and context packing. (Being written.)
